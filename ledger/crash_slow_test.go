//go:build slow

package ledger

import "testing"

// TestCrashRecovery kills the appending child many times (30 rounds, about 2 minutes under -race).
func TestCrashRecovery(t *testing.T)              { crashRounds(t, 30) }
func TestCrashRecoveryArchivingLong(t *testing.T) { crashRoundsMode(t, 30, true) }
