//go:build slow

package ledger

import "testing"

// TestCrashRecovery kills the appending child many times (100 rounds).
func TestCrashRecovery(t *testing.T) { crashRounds(t, 100) }
