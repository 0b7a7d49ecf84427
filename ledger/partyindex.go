package ledger

// The party indexes (client, target/service, user) by start time.
//
// One key per record and party would be three of the five keys of a record,
// and Badger's cost per synced commit grows with its keys. Records of one
// commit usually share their client and service and started within the
// same second, so the records of a commit with the same party and the same
// second of start time share one key:
//
//	<pfx> <party> 0 <second> <first index> -> (<start> <index>)...
//
// where <second> is the start time in nanoseconds rounded down to a whole
// second (indexBucket), <first index> the leaf index of the group's first
// record (so groups of different commits differ), and the value lists each
// record's start time in nanoseconds and leaf index, 8 bytes big-endian
// each, in index order. All start times of a group fall in its second, so
// a query for [from, to) reads the groups from from's second on, and the
// records of one second in start-time order.

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
)

// party is one index a record is listed in, and its key there.
type party struct {
	pfx byte
	id  string
}

// partiesOf lists the party indexes of a record.
func partiesOf(rec *ledgerv1.Record) []party {
	ps := []party{{pfxClient, rec.GetClient()}, {pfxService, rec.GetTarget() + "/" + rec.GetService()}}
	if u := rec.GetUserId(); u != "" {
		ps = append(ps, party{pfxUser, u})
	}
	return ps
}

// indexBucket is the span of start times that one index group covers.
const indexBucket = uint64(time.Second)

// member is one record in an index group.
type member struct {
	start uint64 // start time, Unix nanoseconds as uint64 (key order)
	index uint64
}

func compareMembers(a, b member) int {
	if c := cmp.Compare(a.start, b.start); c != 0 {
		return c
	}
	return cmp.Compare(a.index, b.index)
}

func bucketOf(start uint64) uint64 { return start - start%indexBucket }

func encodeMembers(ms []member) []byte {
	b := make([]byte, 0, 16*len(ms))
	for _, m := range ms {
		b = append(b, u64(m.start)...)
		b = append(b, u64(m.index)...)
	}
	return b
}

var errIndexValue = errors.New("corrupt party index value")

// decodeMembers appends the members of a group value to ms.
func decodeMembers(ms []member, v []byte) ([]member, error) {
	if len(v) == 0 || len(v)%16 != 0 {
		return ms, errIndexValue
	}
	for ; len(v) > 0; v = v[16:] {
		ms = append(ms, member{start: keyUint(v), index: keyUint(v[8:])})
	}
	return ms, nil
}

// indexGroups gathers the party index entries of one commit into groups.
type indexGroups struct {
	byKey map[string]*indexGroup
	order []*indexGroup // first-seen order, so the commit is deterministic
}

type indexGroup struct {
	prefix  []byte // <pfx> <party> 0
	bucket  uint64
	members []member
}

// add indexes leaf i under party id of index pfx with the given start time.
func (g *indexGroups) add(pfx byte, id string, start int64, i uint64) {
	m := member{start: uint64(start), index: i}
	prefix := indexPrefix(pfx, id)
	k := string(append(bytes.Clone(prefix), u64(bucketOf(m.start))...))
	grp := g.byKey[k]
	if grp == nil {
		if g.byKey == nil {
			g.byKey = map[string]*indexGroup{}
		}
		grp = &indexGroup{prefix: prefix, bucket: bucketOf(m.start)}
		g.byKey[k] = grp
		g.order = append(g.order, grp)
	}
	grp.members = append(grp.members, m)
}

// set writes every group as one key.
func (g *indexGroups) set(set func(k, v []byte)) {
	for _, grp := range g.order {
		set(groupKey(grp.prefix, grp.bucket, grp.members[0].index), encodeMembers(grp.members))
	}
}

func groupKey(prefix []byte, bucket, first uint64) []byte {
	k := make([]byte, 0, len(prefix)+16)
	k = append(k, prefix...)
	k = append(k, u64(bucket)...)
	return append(k, u64(first)...)
}

// txnIndexed returns the leaf indexes of the records of party id of index
// pfx that started in [lo, hi) (nanoseconds), oldest first (then by index),
// at most limit (0: all).
func txnIndexed(txn *badger.Txn, pfx byte, id string, lo, hi uint64, limit int) ([]uint64, error) {
	p := indexPrefix(pfx, id)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
	defer it.Close()
	var out []uint64
	var second []member // the groups of one bucket
	var cur uint64
	full := func() bool { return limit > 0 && len(out) >= limit }
	emit := func() {
		slices.SortFunc(second, compareMembers)
		for _, m := range second {
			if m.start >= lo && m.start < hi && !full() {
				out = append(out, m.index)
			}
		}
		second = second[:0]
	}
	for it.Seek(append(bytes.Clone(p), u64(bucketOf(lo))...)); it.Valid() && !full(); it.Next() {
		k := it.Item().Key()[len(p):]
		if len(k) != 16 {
			return nil, fmt.Errorf("party index key %q malformed", it.Item().Key())
		}
		b := keyUint(k)
		if b >= hi {
			break
		}
		if b != cur {
			emit()
			cur = b
		}
		err := it.Item().Value(func(v []byte) error {
			var err error
			second, err = decodeMembers(second, v)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if !full() {
		emit()
	}
	return out, nil
}

// txnUnindex removes leaf i (party id of index pfx, start time start) from
// its group, deleting the group's key, and writing the rest of the group
// back under its new first index.
func txnUnindex(txn *badger.Txn, pfx byte, id string, start int64, i uint64) error {
	prefix := indexPrefix(pfx, id)
	b := bucketOf(uint64(start))
	var key []byte
	var ms []member
	it := txn.NewIterator(badger.IteratorOptions{Prefix: append(bytes.Clone(prefix), u64(b)...)})
	for it.Rewind(); it.Valid() && key == nil; it.Next() {
		var found []member
		err := it.Item().Value(func(v []byte) error {
			var err error
			found, err = decodeMembers(nil, v)
			return err
		})
		if err != nil {
			it.Close()
			return err
		}
		if slices.ContainsFunc(found, func(m member) bool { return m.index == i }) {
			key, ms = it.Item().KeyCopy(nil), found
		}
	}
	it.Close()
	if key == nil {
		return nil // not indexed (pruned before)
	}
	ms = slices.DeleteFunc(ms, func(m member) bool { return m.index == i })
	if err := txn.Delete(key); err != nil {
		return err
	}
	if len(ms) == 0 {
		return nil
	}
	return txn.Set(groupKey(prefix, b, ms[0].index), encodeMembers(ms))
}

// checkPartyIndex checks the groups of one party index against want (the
// timeIndexKey of every record expected in it, which it deletes as found):
// every group is well formed, lies in its second, starts with its first
// index, and names only expected records, each once.
func checkPartyIndex(txn *badger.Txn, pfx byte, want map[string]bool) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfx}})
	defer it.Close()
	var ms []member
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) < 18 || k[len(k)-17] != 0 {
			return fail(ReasonIndexMismatch, -1, "index key %q malformed", k)
		}
		prefix, b, first := k[:len(k)-16], keyUint(k[len(k)-16:]), keyUint(k[len(k)-8:])
		err := it.Item().Value(func(v []byte) error {
			var err error
			ms, err = decodeMembers(ms[:0], v)
			return err
		})
		if err != nil {
			return fail(ReasonIndexMismatch, -1, "index key %q: %v", k, err)
		}
		if ms[0].index != first {
			return fail(ReasonIndexMismatch, -1, "index key %q does not start with record %d", k, first)
		}
		for j, m := range ms {
			if bucketOf(m.start) != b || j > 0 && m.index <= ms[j-1].index {
				return fail(ReasonIndexMismatch, -1, "index key %q: record %d out of place", k, m.index)
			}
			id := string(append(append(bytes.Clone(prefix), u64(m.start)...), u64(m.index)...))
			if !want[id] {
				return fail(ReasonIndexMismatch, -1, "index key %q names record %d, which is not so", k, m.index)
			}
			delete(want, id)
		}
	}
	return nil
}
