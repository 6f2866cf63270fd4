package conn

// Deadline is the client-side deadline Config set.
var Deadline = deadline
