package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Log entry encoding, version 1:
//
//	byte     version (1)
//	uvarint  index
//	uvarint  term
//	byte     type
//	byte     flags (bit 0: AppendedAt set)
//	varint   AppendedAt seconds since the Unix epoch   (only if flag bit 0)
//	uvarint  AppendedAt nanoseconds within the second (only if flag bit 0)
//	uvarint  len(data)  + data
//	uvarint  len(extensions) + extensions
//
// A nil and an empty Data (or Extensions) both decode as nil. AppendedAt keeps
// its instant, not its location or monotonic reading.
const codecVersion = 1

const flagAppendedAt = 1

var errCorrupt = errors.New("raftstore: corrupt log entry")

func appendLog(b []byte, l *raft.Log) []byte {
	b = append(b, codecVersion)
	b = binary.AppendUvarint(b, l.Index)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	if l.AppendedAt.IsZero() {
		b = append(b, 0)
	} else {
		b = append(b, flagAppendedAt)
		b = binary.AppendVarint(b, l.AppendedAt.Unix())
		b = binary.AppendUvarint(b, uint64(l.AppendedAt.Nanosecond()))
	}
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return b
}

// decodeLog parses an encoded entry into l. It copies everything it keeps, so
// b may be reused afterwards.
func decodeLog(b []byte, l *raft.Log) error {
	d := decoder{b: b}
	if v := d.byte(); v != codecVersion {
		if d.err != nil {
			return d.err
		}
		return fmt.Errorf("%w: unknown version %d", errCorrupt, v)
	}
	out := raft.Log{}
	out.Index = d.uvarint()
	out.Term = d.uvarint()
	out.Type = raft.LogType(d.byte())
	switch flags := d.byte(); flags {
	case 0:
	case flagAppendedAt:
		sec := d.varint()
		nsec := d.uvarint()
		if nsec >= uint64(time.Second) {
			return fmt.Errorf("%w: nanoseconds out of range", errCorrupt)
		}
		out.AppendedAt = time.Unix(sec, int64(nsec))
	default:
		if d.err == nil {
			return fmt.Errorf("%w: unknown flags %#x", errCorrupt, flags)
		}
	}
	out.Data = d.bytes()
	out.Extensions = d.bytes()
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.b))
	}
	*l = out
	return nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated", errCorrupt)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	if n == 0 {
		return nil
	}
	out := make([]byte, n)
	copy(out, d.b[:n])
	d.b = d.b[n:]
	return out
}
