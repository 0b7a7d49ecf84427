package node

import "time"

// SetConsumerTLSReload makes nodes started afterwards check their consumer
// TLS files every d, until the returned function restores the default.
func SetConsumerTLSReload(d time.Duration) (restore func()) {
	old := consumerTLSReload
	consumerTLSReload = d
	return func() { consumerTLSReload = old }
}
