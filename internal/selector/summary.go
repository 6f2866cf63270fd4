package selector

import (
	"fmt"
	"strings"
)

// Summary is the selection in words, as written: key values in the order
// of the schema ("db shop, app report*, longer than 5m").
func (s Spec) Summary() string {
	var parts []string
	add := func(key string, v []string) {
		if len(v) > 0 {
			parts = append(parts, key+" "+strings.Join(v, " | "))
		}
	}
	add("db", s.DB)
	add("user", s.User)
	add("app", s.App)
	add("client", s.Client)
	add("state", s.State)
	add("backend_type", s.BackendType)
	add("exclude_db", s.ExcludeDB)
	add("exclude_user", s.ExcludeUser)
	add("exclude_app", s.ExcludeApp)
	if s.Query != "" {
		parts = append(parts, fmt.Sprintf("query ~ %q", s.Query))
	}
	for i := range timedSelectors {
		if v := *timedSelectors[i].spec(&s); v != "" {
			parts = append(parts, timedSelectors[i].words+" "+v)
		}
	}
	if s.Waiting {
		parts = append(parts, "waiting on a lock")
	}
	if s.Blocking {
		parts = append(parts, "blocking others")
	}
	if s.BlockingReplay {
		parts = append(parts, "blocking WAL replay")
	}
	if l := s.LockConflict; l != nil {
		lock := "a lock"
		if l.Held {
			lock = "a granted lock"
		}
		parts = append(parts, fmt.Sprintf("%s conflicting with %s on %d object%s", lock, LockModeWords(l.Mode), len(l.Objects), map[bool]string{true: "", false: "s"}[len(l.Objects) == 1]))
	}
	return strings.Join(parts, ", ")
}
