//go:build !unix

package cpustat

import "time"

// Process cannot be read on this system.
func Process() (time.Duration, bool) { return 0, false }
