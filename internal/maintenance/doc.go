// Package maintenance holds what a maintenance window needs beyond single
// actions: kick's count of sessions that arrived while it worked (and,
// next, drain/undrain and unblock). Every session it ends goes through
// package action: the same guard, protections and outcomes.
package maintenance
