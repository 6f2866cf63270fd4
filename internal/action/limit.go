package action

import "fmt"

// LimitError: more sessions were chosen than a limit allows; nothing was
// done.
type LimitError struct {
	Chosen, Limit int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%d sessions chosen, more than --limit %d: nothing done", e.Chosen, e.Limit)
}
