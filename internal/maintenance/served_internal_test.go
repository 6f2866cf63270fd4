package maintenance

import (
	"errors"
	"testing"

	"github.com/pgreap/pgreap/internal/pooler"
)

// A pooler's names of a database are its entries that point at it; when
// they point at more than one server (a database of the same name
// elsewhere), a PAUSE or a KILL could hold up or end another server's
// clients: refused.
func TestServedByOneServerOnly(t *testing.T) {
	a := &pooler.Admin{Pooler: &pooler.Pooler{Name: "pgb:6432"}}
	one := []pooler.Database{
		{Name: "pgbouncer", Port: 6432, Database: "pgbouncer"},
		{Name: "shop", Host: "10.0.0.1", Port: 5432},
		{Name: "shop_ro", Host: "10.0.0.1", Port: 5432, Database: "shop"},
		{Name: "other", Host: "10.0.0.1", Port: 5432},
	}
	got, err := servedBy(a, one, "shop", nil)
	if err != nil || len(got) != 2 || got[0].Name != "shop" || got[1].Name != "shop_ro" {
		t.Fatalf("one server: %v, %v", got, err)
	}
	two := append(one, pooler.Database{Name: "elsewhere", Host: "10.0.0.2", Port: 5432, Database: "shop"})
	if _, err := servedBy(a, two, "shop", nil); !errors.Is(err, ErrManyServers) {
		t.Fatalf("two servers: %v, want ErrManyServers", err)
	}
	if got, err := servedBy(a, two, "other", nil); err != nil || len(got) != 1 {
		t.Fatalf("another database of the same pooler: %v, %v", got, err)
	}
}
