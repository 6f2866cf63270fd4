package conn

// Deadline is the client-side deadline of a connection Connect opened.
var Deadline = deadline

// NewError is a connection error of an attempt that used password.
func NewError(user, password string, err error) *Error {
	return &Error{User: user, Err: err, password: password}
}

// RequestedSearchPath is the search_path options set, as SearchPath has it.
func RequestedSearchPath(options string) (path string, set, known bool) {
	sp := requestedSearchPath(options)
	return sp.path, sp.set, sp.known
}
