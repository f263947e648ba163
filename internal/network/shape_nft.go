package network

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ShapeTable is the nftables table (inet) of the from-guest rate limits,
// apart from the firewall's: one rule per shaped TAP in one prerouting
// chain, tagged with the TAP's name.
const ShapeTable = "smolvm-shape"

const shapeChain = "from-guests"

// limitFromGuest replaces the rule for TAP name by one that drops what it
// sends above bps bytes per second; 0 only removes it. The table goes
// when its last rule does.
func limitFromGuest(name string, bps int64) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	table := &nftables.Table{Name: ShapeTable, Family: nftables.TableFamilyINet}
	var chain *nftables.Chain
	var rules []*nftables.Rule
	if _, err := c.ListTableOfFamily(ShapeTable, nftables.TableFamilyINet); err == nil {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name == ShapeTable && ch.Name == shapeChain {
				chain = ch
			}
		}
		if chain != nil {
			if rules, err = c.GetRules(table, chain); err != nil {
				return err
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	others := 0
	for _, r := range rules {
		if string(r.UserData) == name {
			if err := c.DelRule(&nftables.Rule{Table: table, Chain: chain, Handle: r.Handle}); err != nil {
				return err
			}
		} else {
			others++
		}
	}
	switch {
	case bps == 0 && others == 0 && chain != nil:
		c.DelTable(table)
	case bps > 0:
		if chain == nil {
			c.AddTable(table)
			prio := nftables.ChainPriorityMangle
			chain = c.AddChain(&nftables.Chain{Name: shapeChain, Table: table, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookPrerouting, Priority: prio, Policy: ptr(nftables.ChainPolicyAccept)})
		}
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, UserData: []byte(name), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
			// No burst of its own: nftables' bucket holds a whole unit's
			// (a second's) worth already.
			&expr.Limit{Type: expr.LimitTypePktBytes, Rate: uint64(bps), Unit: expr.LimitTimeSecond, Over: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return nil
}

// ShapedTAPs lists the TAPs that have a from-guest limit.
func ShapedTAPs() []string {
	c, err := nftables.New()
	if err != nil {
		return nil
	}
	table := &nftables.Table{Name: ShapeTable, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(table, &nftables.Chain{Name: shapeChain, Table: table})
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range rules {
		out = append(out, string(r.UserData))
	}
	return out
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func ptr[T any](v T) *T { return &v }

// UnshapeTAP removes the from-guest limit of TAP name, whether or not
// the device still exists (its tc qdisc went with it).
func UnshapeTAP(name string) error { return limitFromGuest(name, 0) }
