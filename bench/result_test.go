package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// goldenResult is a fixed Result exercising every key.
func goldenResult() *Result {
	cfg := Config{
		Proto: ProtoHTTP1, Target: "http://127.0.0.1:8080/", Rate: 2000,
		Duration: 10 * time.Second, Warmup: 2 * time.Second,
		Concurrency: 64, Connections: 8, Payload: 0,
	}
	if err := cfg.normalize(); err != nil {
		panic(err)
	}
	r := newResult(cfg)
	var h Histogram
	for i := range 20000 {
		h.RecordMicros(uint64(100 + i%1000))
	}
	h.RecordMicros(9876)
	r.Requests = 20001
	r.Errors["http_5xx"] = 2
	r.Errors["grpc_UNAVAILABLE"] = 1
	r.ErrorTotal = 3
	r.addBytes(3 * 19998)
	r.finish(10*time.Second, &h)
	var lag Histogram
	for i := range 20001 {
		lag.RecordMicros(uint64(i % 120))
	}
	r.SendLagUS = summarize(&lag)
	r.Processes = []ProcStats{
		{Name: "sidecar-a", PID: 4242, CPUSeconds: 3.21, CPUMicrosPerRequest: 160.492, PeakRSSMiB: 41.25, HWMRSSMiB: 43, Samples: 41},
		{Name: "gone", PID: 4343, Error: "open /proc/4343/stat: no such file or directory"},
	}
	r.Generator = &GeneratorStats{CPUSeconds: 1.5, CPUMicrosPerRequest: 74.996, Cores: 0.15, CPUs: 2}
	return r
}

func TestResultGolden(t *testing.T) {
	got, err := goldenResult().JSON()
	if err != nil {
		t.Fatal(err)
	}
	const path = "testdata/result.golden.json"
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("JSON encoding changed; if intended (additive only), run with -update.\ngot:\n%s\nwant:\n%s", got, want)
	}
}

// schemaRow is one documented key of SCHEMA.md.
type schemaRow struct {
	key, typ string
	optional bool
}

func readSchemaDoc(t *testing.T) []schemaRow {
	t.Helper()
	doc, err := os.ReadFile("SCHEMA.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?m)^\\| `([a-z0-9_.\\[\\]]+)` \\| (string|number|integer|object|array) \\| (.*)\\|$")
	var rows []schemaRow
	for _, m := range re.FindAllStringSubmatch(string(doc), -1) {
		rows = append(rows, schemaRow{key: m[1], typ: m[2], optional: strings.Contains(m[3], "*Optional*")})
	}
	if len(rows) < 20 {
		t.Fatalf("only %d keys found in SCHEMA.md", len(rows))
	}
	return rows
}

// flatten lists every key path of a decoded JSON value with its JSON type;
// array elements are written "name[].key", and the entries of the errors
// map are not keys of the schema.
func flatten(prefix string, v any, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			out[p] = jsonType(e)
			if p == "errors" {
				continue
			}
			flatten(p, e, out)
		}
	case []any:
		for _, e := range x {
			flatten(prefix+"[]", e, out)
		}
	}
}

func jsonType(v any) string {
	switch x := v.(type) {
	case string:
		return "string"
	case float64:
		if x == math.Trunc(x) {
			return "integer"
		}
		return "number"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case bool:
		return "bool"
	}
	return "null"
}

func TestSchemaDocumented(t *testing.T) {
	rows := readSchemaDoc(t)
	b, err := goldenResult().JSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	flatten("", m, got)
	documented := map[string]bool{}
	for _, row := range rows {
		documented[row.key] = true
		typ, ok := got[row.key]
		if !ok {
			t.Errorf("documented key %q missing from the JSON", row.key)
			continue
		}
		// An integer is also a valid number.
		if typ != row.typ && !(row.typ == "number" && typ == "integer") {
			t.Errorf("key %q: JSON type %s, documented %s", row.key, typ, row.typ)
		}
	}
	var extra []string
	for k := range got {
		if !documented[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("keys not documented in SCHEMA.md: %v", extra)
	}
	if m["schema"] != SchemaVersion || SchemaVersion != "quicmesh.bench/v1" {
		t.Errorf("schema = %v", m["schema"])
	}
	for k, v := range m["errors"].(map[string]any) {
		if jsonType(v) != "integer" {
			t.Errorf("errors[%s] is %s", k, jsonType(v))
		}
	}

	// Without processes, every non-optional key is still there and
	// "processes" is omitted.
	r := goldenResult()
	r.Processes = nil
	r.Errors = map[string]int64{}
	b, _ = r.JSON()
	m = nil
	json.Unmarshal(b, &m)
	got = map[string]string{}
	flatten("", m, got)
	for _, row := range rows {
		_, ok := got[row.key]
		inArray := strings.Contains(row.key, "[]")
		switch {
		case row.key == "processes" || inArray:
			if ok {
				t.Errorf("%q present without processes", row.key)
			}
		case !ok && !row.optional:
			t.Errorf("%q missing without processes", row.key)
		}
	}
	if e, ok := m["errors"].(map[string]any); !ok || len(e) != 0 {
		t.Errorf("errors without failures = %v, want {}", m["errors"])
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := goldenResult().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"http1", "open loop, uniform pacing at 2000 req/s", "p99.9", "20001",
		"grpc_UNAVAILABLE=1", "http_5xx=2", "sidecar-a", "4242", "160", "generator CPU 1.500 s, 75 µs/request, 0.15 of 2 CPUs busy"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
