package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "sild",
		Short: "sild: a gRPC-native federated data exchange mesh",
		Long: `sild lets separate organisations exchange data directly and securely over gRPC.

Each organisation runs a security server (sild node) that signs, logs and
carries calls between member systems; a Raft-replicated registry (sild
registry) manages members, trust and configuration, never content; ecosystems
federate so that a member of one can call a service of another.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newLedgerCmd(),
		newRegistryCmd(),
		newNodeCmd(),
		newCtlCmd(),
		newDemoCmd(),
		newBenchCmd(),
	)
	return root
}
