package maintenance

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
)

var (
	//go:embed sql/prepared.sql
	preparedSQL string
	//go:embed sql/prepared_may.sql
	preparedMaySQL string
	//go:embed sql/xact_status.sql
	xactStatusSQL string
)

// JudgePrepared is what a rollback of the prepared transaction p would
// meet, without one: Planned, or Denied with the reason (its owner or a
// superuser only, connected to its database). A dry run says what the real
// run would, and a run asks only about those it may end.
func JudgePrepared(ctx context.Context, conn *pgx.Conn, p *activity.Session) (action.Outcome, string, error) {
	var refused *string
	if err := conn.QueryRow(ctx, preparedMaySQL, p.Usename, p.Datname).Scan(&refused); err != nil {
		return "", "", fmt.Errorf("prepared transaction %q: %w", p.GID, err)
	}
	if refused != nil {
		return action.Denied, *refused, nil
	}
	return action.Planned, "", nil
}

// RollbackPrepared rolls back the prepared transaction p (a row of
// Snapshot.Prepared) with ROLLBACK PREPARED, on conn, which must be
// connected to p's database. It is guarded by (GID, prepared time): a GID
// is free again once its transaction ended, and one that a new transaction
// took is that one's, reported changed. ROLLBACK PREPARED runs on its own
// (never in a transaction block, nor from a function) and takes the GID
// only, so the guard is read just before it, one round trip earlier; the
// transaction's id, read with the guard, says afterwards how the named
// transaction ended. What no statement can tell: if in that round trip
// another session ended it and a new transaction took the same GID,
// ROLLBACK PREPARED ended the new one (a two-phase coordinator's GIDs are
// unique: that takes a GID reused within milliseconds, on purpose).
//
// Rolling back a prepared transaction can break the atomicity of the
// distributed transaction it is a part of (another system may have
// committed its side): the caller asks for it explicitly.
func RollbackPrepared(ctx context.Context, conn *pgx.Conn, p *activity.Session) (action.Outcome, string) {
	var (
		prepared        time.Time
		database, owner string
		xid             int64
	)
	err := conn.QueryRow(ctx, preparedSQL, p.GID).Scan(&prepared, &database, &owner, &xid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return action.Gone, "ended (committed or rolled back) before the rollback"
	case err != nil:
		return outcomeOf(err)
	case !prepared.Equal(p.XactStart) || database != p.Datname:
		return action.Changed, fmt.Sprintf("the GID names another transaction now, prepared %s in %s: left alone",
			prepared.Format(time.RFC3339Nano), database)
	}
	if _, err := conn.Exec(ctx, "ROLLBACK PREPARED "+quoteLiteral(p.GID)); err != nil {
		return outcomeOf(err)
	}
	var status *string
	if err := conn.QueryRow(ctx, xactStatusSQL, xid).Scan(&status); err != nil {
		return action.Survived, fmt.Sprintf("ROLLBACK PREPARED returned, and the transaction's state could not be read: %v", err)
	}
	switch {
	case status != nil && *status == "aborted":
		return action.RolledBack, ""
	case status != nil && *status == "committed":
		// Committed by someone else between the guard and the rollback,
		// and a new transaction prepared with the same GID: that one is
		// what ROLLBACK PREPARED ended.
		return action.Gone, "committed by another session just before the rollback; ROLLBACK PREPARED then ended a new transaction that had taken its GID"
	}
	return action.Survived, "ROLLBACK PREPARED returned, and the transaction is not shown aborted"
}

// outcomeOf is the outcome of a rollback the server refused.
func outcomeOf(err error) (action.Outcome, string) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return action.Survived, fmt.Sprintf("not verified: %v", err)
	}
	switch pgErr.Code {
	case "42704": // undefined_object: no such GID any more
		return action.Gone, "ended (committed or rolled back) before the rollback"
	case "42501": // insufficient_privilege
		return action.Denied, pgErr.Message + ": only its owner or a superuser may end it"
	case "55000": // object_not_in_prerequisite_state: another session is ending it
		return action.Changed, pgErr.Message + ": another session is ending it"
	}
	return action.Denied, pgErr.Message
}

// quoteLiteral quotes s as an escape string literal: ROLLBACK PREPARED
// takes a literal, not a parameter, and E'...' reads the same whatever
// standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
