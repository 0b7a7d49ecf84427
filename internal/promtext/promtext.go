// Package promtext reads the samples of a Prometheus text endpoint, for
// tools and tests that look at a node's /metrics.
package promtext

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Scrape fetches url and returns its samples by series (the metric name
// with its labels as written, e.g. `x_total{code="0"}`); comments and
// unparsable lines are skipped.
func Scrape(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			continue
		}
		series, v := line[:i], line[i+1:]
		if j := strings.LastIndexByte(series, ' '); j > 0 && !strings.Contains(series[j:], "}") { // a timestamp follows the value
			series, v = series[:j], series[j+1:]
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[series] = f
		}
	}
	return out, sc.Err()
}
