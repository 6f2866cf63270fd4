package watch

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the daemon's Prometheus series. Labels carry target, rule,
// action, outcome and state names only: never a pid, a query or a user.
type Metrics struct {
	Registry       *prometheus.Registry
	Sessions       *prometheus.GaugeVec
	Actions        *prometheus.CounterVec
	Snapshot       *prometheus.HistogramVec
	TargetUp       *prometheus.GaugeVec
	Leader         *prometheus.GaugeVec
	LeaderConflict *prometheus.GaugeVec
	PoolersUp      *prometheus.GaugeVec
	ReplayLag      *prometheus.GaugeVec
	Suppressed     *prometheus.CounterVec
	ReloadSuccess  prometheus.Gauge
	ReloadLastTime prometheus.Gauge
}

// NewMetrics registers the series on a registry of their own (with the Go
// and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_sessions", Help: "Client sessions in the last snapshot, by state (the leader's view).",
		}, []string{"target", "state"}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgreap_actions_total", Help: "Attempts by rule, action and outcome (planned for dry runs).",
		}, []string{"target", "rule", "action", "outcome"}),
		Snapshot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pgreap_snapshot_duration_seconds", Help: "Wall time of the snapshot statement.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"target"}),
		TargetUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_target_up", Help: "1 while the daemon is connected to the target.",
		}, []string{"target"}),
		Leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_leader", Help: "1 while this replica holds the target's advisory lock and acts.",
		}, []string{"target"}),
		LeaderConflict: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_leader_conflict", Help: "1 while the target's election lock is held by a session that is not a pgreap watch (an impostor keeps every replica standing by).",
		}, []string{"target"}),
		PoolersUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_poolers_up", Help: "1 while every PgBouncer of the target (pgbouncer:) answered the last look; 0 when one did not, and no snapshot was taken.",
		}, []string{"target"}),
		ReplayLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgreap_replay_lag_seconds", Help: "On a hot standby, now() - pg_last_xact_replay_timestamp() at the last snapshot (it grows too while the primary commits nothing); no series on a primary.",
		}, []string{"target"}),
		Suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgreap_rule_suppressed_total", Help: "Sessions a real rule would have signalled past its max_actions (or the policy's), audited suppressed: once per rule and session per window. Alert on it.",
		}, []string{"target", "rule"}),
		ReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgreap_config_reload_success", Help: "1 if the last policy (re)load succeeded.",
		}),
		ReloadLastTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgreap_config_reload_success_timestamp_seconds", Help: "When the policy was last loaded successfully.",
		}),
	}
	m.Registry.MustRegister(m.Sessions, m.Actions, m.Snapshot, m.TargetUp, m.Leader, m.LeaderConflict, m.PoolersUp, m.ReplayLag, m.Suppressed, m.ReloadSuccess, m.ReloadLastTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// forget drops a target's series (it left the policy, or its DSN
// changed).
func (m *Metrics) forget(target string) {
	l := prometheus.Labels{"target": target}
	m.Sessions.DeletePartialMatch(l)
	m.Actions.DeletePartialMatch(l)
	m.Snapshot.DeletePartialMatch(l)
	m.TargetUp.DeletePartialMatch(l)
	m.Leader.DeletePartialMatch(l)
	m.LeaderConflict.DeletePartialMatch(l)
	m.PoolersUp.DeletePartialMatch(l)
	m.ReplayLag.DeletePartialMatch(l)
	m.Suppressed.DeletePartialMatch(l)
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
