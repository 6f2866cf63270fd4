// Package notify sends the daemon's events (an action's audit line, a
// rule past its budget, a change of leader, an error) to the webhooks of
// the policy's notify: block.
//
// It never delays the caller: Send only puts the event in a bounded queue
// per sink, and drops it (counted, logged once per burst) when the queue
// is full. One worker per sink POSTs the events in order, retrying
// network errors, 5xx and 429 with exponential backoff (Retry-After
// honoured within a cap). A sink's URL and header values are secrets:
// they are never in a log line, an error or a metric; a sink is named by
// its name: or its URL's host.
package notify
