package cpustat

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/pprof"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Do runs f with the profiler label key=value on the calling goroutine;
// goroutines started while f runs carry it too, and so do the goroutines
// they start. CPU samples taken in them are attributed to value by
// ByLabel.
func Do(key, value string, f func()) {
	pprof.Do(context.Background(), pprof.Labels(key, value), func(context.Context) { f() })
}

// ByLabel reads a CPU profile as written by pprof.StartCPUProfile (gzipped
// profile.proto) and returns the CPU time of its samples by the value of
// label key; samples without it count under "".
func ByLabel(profile []byte, key string) (map[string]time.Duration, error) {
	zr, err := gzip.NewReader(bytes.NewReader(profile))
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	p, err := parseProfile(raw)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	vi := -1 // the value in nanoseconds of CPU
	for i, t := range p.types {
		if p.str(t.typ) == "cpu" && p.str(t.unit) == "nanoseconds" {
			vi = i
		}
	}
	if vi < 0 {
		return nil, errors.New("cpu profile: no cpu/nanoseconds sample type")
	}
	out := map[string]time.Duration{}
	for _, s := range p.samples {
		if vi >= len(s.values) {
			return nil, errors.New("cpu profile: sample without its cpu value")
		}
		v := ""
		for _, l := range s.labels {
			if p.str(l.key) == key {
				v = p.str(l.str)
			}
		}
		out[v] += time.Duration(s.values[vi])
	}
	return out, nil
}

// The parts of profile.proto that ByLabel reads.
type (
	valueType struct{ typ, unit int64 }
	label     struct{ key, str int64 }
	sample    struct {
		values []int64
		labels []label
	}
	profile struct {
		types   []valueType
		samples []sample
		strings []string
	}
)

func (p *profile) str(i int64) string {
	if i < 0 || i >= int64(len(p.strings)) {
		return ""
	}
	return p.strings[i]
}

// Field numbers of profile.proto.
const (
	fProfileSampleType = 1
	fProfileSample     = 2
	fProfileString     = 6
	fSampleValue       = 2
	fSampleLabel       = 3
)

var errMalformed = errors.New("malformed profile")

// fields calls f for each field of the message b.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return errMalformed
		}
		b = b[l:]
		var (
			v []byte
			n uint64
		)
		switch typ {
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		default:
			l = protowire.ConsumeFieldValue(num, typ, b)
		}
		if l < 0 {
			return errMalformed
		}
		b = b[l:]
		if err := f(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}

func parseProfile(b []byte) (*profile, error) {
	p := &profile{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fProfileString:
			p.strings = append(p.strings, string(v))
		case fProfileSampleType:
			typ, unit, err := firstTwo(v)
			p.types = append(p.types, valueType{typ, unit})
			return err
		case fProfileSample:
			s, err := parseSample(v)
			p.samples = append(p.samples, s)
			return err
		}
		return nil
	})
	return p, err
}

// firstTwo reads the varint fields 1 and 2 of message b: a ValueType's
// type and unit, a Label's key and str (string table indexes).
func firstTwo(b []byte) (first, second int64, err error) {
	err = fields(b, func(num protowire.Number, _ protowire.Type, _ []byte, n uint64) error {
		switch num {
		case 1:
			first = int64(n)
		case 2:
			second = int64(n)
		}
		return nil
	})
	return first, second, err
}

func parseSample(b []byte) (sample, error) {
	var s sample
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fSampleValue && typ == protowire.VarintType:
			s.values = append(s.values, int64(n))
		case num == fSampleValue && typ == protowire.BytesType: // packed
			for len(v) > 0 {
				x, l := protowire.ConsumeVarint(v)
				if l < 0 {
					return errMalformed
				}
				s.values = append(s.values, int64(x))
				v = v[l:]
			}
		case num == fSampleLabel && typ == protowire.BytesType:
			key, str, err := firstTwo(v)
			s.labels = append(s.labels, label{key, str})
			return err
		}
		return nil
	})
	return s, err
}
