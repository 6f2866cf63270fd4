package conn

// Deadline is the client-side deadline of a connection Connect opened.
var Deadline = deadline

// NewError is a connection error of an attempt that used password.
func NewError(user, password string, err error) *Error {
	return &Error{User: user, Err: err, password: password}
}
