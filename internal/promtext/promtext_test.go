package promtext

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP a_total A.\n# TYPE a_total counter\na_total 42\nb{code=\"0\",x=\"y z\"} 1.5e+06\nc 7 1700000000000\nbroken\nd NaN\n\n")
	}))
	defer srv.Close()
	got, err := Scrape(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got["a_total"] != 42 || got[`b{code="0",x="y z"}`] != 1.5e6 || got["c"] != 7 || len(got) != 4 {
		t.Fatalf("samples %v", got)
	}
	srv.Close()
	if _, err := Scrape(context.Background(), srv.URL); err == nil {
		t.Fatal("no error from a closed server")
	}
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	if _, err := Scrape(context.Background(), notFound.URL); err == nil {
		t.Fatal("no error for 404")
	}
}
