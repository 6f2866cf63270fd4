package output

import (
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pooler"
)

// Serving says what a pooler's server connection does: it serves a client
// (named), sits idle in the pool (pooled, idle), or its state changed after
// the pooler was asked, so the client it serves now is not known.
const (
	servingClient  = "client"
	servingNone    = "none"
	servingUnknown = "unknown"
)

func serving(k *pooler.Link) string {
	switch {
	case k.Unknown:
		return servingUnknown
	case k.Served:
		return servingClient
	}
	return servingNone
}

// PooledClient is the JSON "pooler" object of a session: the pooled client
// using the backend now, as the pooler named it. Client fields are null
// when it serves none (serving "none": idle in the pool), or one not known
// (serving "unknown": its state changed after the pooler was asked).
type PooledClient struct {
	Pooler          string  `json:"pooler"`
	ClientAddr      *string `json:"client_addr"`
	ClientPort      *int    `json:"client_port"`
	ApplicationName *string `json:"application_name"`
	User            *string `json:"user"`
	PoolMode        *string `json:"pool_mode"`
	Serving         string  `json:"serving"`
}

// pooledFields appends the pooled client of the session: one JSON object
// (json), or flat pooler_* columns (CSV).
func pooledFields(f []field, s *activity.Session, json bool) []field {
	k := s.Pooler
	if json {
		if k == nil {
			return append(f, field{"pooler", value{}})
		}
		return append(f, field{"pooler", value{kind: kindAny, any: Pooled(k)}})
	}
	if k == nil {
		k = &pooler.Link{}
	}
	served := k.Served && !k.Unknown
	cell := func(v string) value {
		if !served {
			return value{}
		}
		return nullStr(v)
	}
	var mode, srv value
	if s.Pooler != nil {
		mode, srv = nullStr(k.PoolMode), str(serving(k))
	}
	port, app := value{}, value{}
	if served {
		port, app = nullInt(int64(k.ClientPort)), str(k.ApplicationName)
	}
	return append(f,
		field{"pooler", nullStr(k.Pooler)},
		field{"pooler_client_addr", cell(k.ClientAddr)},
		field{"pooler_client_port", port},
		field{"pooler_application_name", app},
		field{"pooler_user", cell(k.User)},
		field{"pooler_pool_mode", mode},
		field{"pooler_serving", srv},
	)
}

// Pooled is the JSON "pooler" object of a pooler's server connection; nil
// for none.
func Pooled(k *pooler.Link) *PooledClient {
	if k == nil {
		return nil
	}
	o := &PooledClient{Pooler: k.Pooler, Serving: serving(k), PoolMode: strPtr(k.PoolMode)}
	if k.Served && !k.Unknown {
		o.ClientAddr, o.ApplicationName, o.User = strPtr(k.ClientAddr), &k.ApplicationName, strPtr(k.User)
		if k.ClientPort != 0 {
			port := k.ClientPort
			o.ClientPort = &port
		}
	}
	return o
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Who is the client at the other end of a session, as a table shows it:
// its user, application_name and CLIENT cell. For a pooler's server
// connection, the client it serves ("ADDR via POOLER"), or "pooled, idle";
// otherwise the session's own.
func Who(s *activity.Session) (user, app, client string) {
	user, app = s.Usename, s.ApplicationName
	if s.ClientAddr.IsValid() {
		client = s.ClientAddr.String()
	}
	if k := s.Pooler; k != nil {
		client = pooledClient(k)
		if k.Served && !k.Unknown {
			user, app = k.User, k.ApplicationName
		}
	}
	return user, app, client
}

// pooledClient is the CLIENT cell of a pooler's server connection: the
// client it serves, via the pooler.
func pooledClient(k *pooler.Link) string {
	switch {
	case k.Unknown:
		return "? via " + k.Pooler
	case !k.Served:
		return "pooled, idle"
	case k.ClientAddr == "":
		return "local via " + k.Pooler
	}
	return k.ClientAddr + " via " + k.Pooler
}
