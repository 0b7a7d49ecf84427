package rpcerr

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorCarriesReasonAndComponent(t *testing.T) {
	err := error(New(codes.PermissionDenied, ReasonAccessDenied, "node.provider", "access denied"))
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || st.Message() != "access denied" {
		t.Fatalf("status = %v", st)
	}
	// The detail survives the wire form of a status.
	back := status.FromProto(st.Proto()).Err()
	if Reason(back) != ReasonAccessDenied || Component(back) != "node.provider" {
		t.Fatalf("reason %q component %q", Reason(back), Component(back))
	}
	if Reason(fmt.Errorf("wrapped: %w", err)) != ReasonAccessDenied {
		t.Fatal("reason lost through wrapping")
	}
	if Reason(status.Error(codes.Internal, "x")) != "" || Reason(nil) != "" {
		t.Fatal("reason invented for a plain status")
	}
}

func TestFromContext(t *testing.T) {
	if err, ok := FromContext(context.Canceled); !ok || status.Code(err) != codes.Canceled {
		t.Fatalf("canceled -> %v %v", err, ok)
	}
	if err, ok := FromContext(fmt.Errorf("x: %w", context.DeadlineExceeded)); !ok || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline -> %v %v", err, ok)
	}
	if _, ok := FromContext(fmt.Errorf("other")); ok {
		t.Fatal("other error mapped")
	}
}
