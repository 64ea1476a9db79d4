// Package scenario runs quicmesh's side-by-side benchmark scenarios
// ("make bench") and renders their report.
//
// The runner (cmd/scenarios, started by bench/run.sh) starts real
// processes: the bundled echo apps ("quicmesh-dev echo"), pairs of quicmesh
// sidecars ("quicmesh proxy") and peer sidecar pairs (Caddy HTTP/3,
// haproxy HTTP/2, stunnel TLS), and drives every load with the load
// generator ("quicmesh-dev bench --json FILE --pid NAME=PID"), so each run's
// result carries the CPU time and peak RSS of the proxy processes. Targets
// are interleaved round by round within one run, and the report gives
// medians over rounds and ratios to the direct (no proxy) target.
//
// Everything that is logic rather than process plumbing lives here and is
// unit-tested: the load plan and the command lines it produces, peer
// configuration files, parsing of quicmesh bench and fortio results,
// medians and ratios, the goals check, and the Markdown and HTML reports.
// All raw results of a run are kept in one JSON file (Results), so the
// report can be rendered again from it without measuring anything.
//
// Adding a scenario is one Load in DefaultPlan (plan.go). Adding a peer
// proxy is a target name (model.go), its configuration files (configs.go),
// its binary in Options (and a flag in cmd/scenarios) and one pairKind
// (pairs.go); the runner starts it, waits until it serves, measures
// and stops it like the others (see Runner for its parts).
package scenario
