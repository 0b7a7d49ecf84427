package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	demov1 "github.com/sildmesh/sild/gen/sild/demo/v1"
	"github.com/sildmesh/sild/internal/demo/services"
)

// newDemoBackendCmd serves the demo's sample services on their own, as a
// member's backend to put behind a node (the operator's guide uses it).
func newDemoBackendCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Serve the sample services (business registry, tax board, population register) as a plain gRPC backend",
		Long: `Serves sild.demo.v1.BusinessRegistryService, TaxBoardService and
PopulationRegisterService with gRPC server reflection on --listen, plaintext:
a stand-in for a member's own system behind its node. Publish a service from
it with 'sild ctl service publish SERVICE --from-backend ADDR'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			s := grpc.NewServer()
			demov1.RegisterBusinessRegistryServiceServer(s, services.BusinessRegistry{})
			demov1.RegisterTaxBoardServiceServer(s, services.TaxBoard{})
			demov1.RegisterPopulationRegisterServiceServer(s, services.PopulationRegister{})
			reflection.Register(s)
			fmt.Fprintf(cmd.ErrOrStderr(), "sample services on %s\n", ln.Addr())
			go func() {
				<-cmd.Context().Done()
				s.GracefulStop()
			}()
			if err := s.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9000", "listen address")
	return cmd
}
