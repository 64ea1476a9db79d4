package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/proxy/authz"
)

// fileConfig is the sidecar's config file (JSON). Every key is documented
// in docs/operations.md; flags override the file.
type fileConfig struct {
	Identity struct {
		Cert             string            `json:"cert"`
		Key              string            `json:"key"`
		Bundle           string            `json:"bundle"`
		FederatedBundles map[string]string `json:"federated_bundles"` // trust domain -> PEM file
		SpiffeSocket     string            `json:"spiffe_socket"`     // Workload API instead of files
		TrustDomain      string            `json:"trust_domain"`      // peers we accept; default: our own
		// AcceptTrustDomains are federated trust domains whose peers we
		// accept besides TrustDomain's.
		AcceptTrustDomains []string `json:"accept_trust_domains"`
	} `json:"identity"`
	// Control is the control plane (quicmesh-control): identity and
	// discovery both come from it.
	Control struct {
		Address   string `json:"address"`
		CA        string `json:"ca"`
		ID        string `json:"id"`
		TokenFile string `json:"token_file"`
	} `json:"control"`
	Inbound struct {
		Listen string            `json:"listen"`
		Routes map[string]string `json:"routes"`
		// Authorization is who may call each route; the only part of
		// the file a running sidecar re-reads (authzwatch.go).
		Authorization *authz.Spec `json:"authorization"`
		// The transparent path's inbound side (flags --plain-inbound,
		// --plain-policy, --app-host, --app-ports).
		PlainListen string `json:"plain_listen"`
		PlainPolicy string `json:"plain_policy"`
		AppHost     string `json:"app_host"`
		AppPorts    []int  `json:"app_ports"`
		// H3: plain HTTP/3 clients with a mesh certificate (flag
		// --inbound-h3; h3edge.go).
		H3 bool `json:"h3"`
	} `json:"inbound"`
	Outbound struct {
		Binds []struct {
			Listen  string `json:"listen"`
			Service string `json:"service"`
			Opaque  bool   `json:"opaque"`
		} `json:"binds"`
		HTTPProxy     *string  `json:"http_proxy"`
		DetectTimeout duration `json:"detect_timeout"`
		MaxInFlight   int      `json:"max_in_flight"`
		Transparent   string   `json:"transparent"` // --transparent
	} `json:"outbound"`
	Discovery struct {
		Static string `json:"static"`
		DNS    struct {
			Zone    string   `json:"zone"`
			Servers []string `json:"servers"`
			MinTTL  duration `json:"min_ttl"`
			MaxTTL  duration `json:"max_ttl"`
			Timeout duration `json:"timeout"`
		} `json:"dns"`
	} `json:"discovery"`
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Debug struct {
		QlogDir string `json:"qlog_dir"`
	} `json:"debug"`
	// Transport is the mesh transport policy: QUIC, HTTP/2 over TCP, or
	// QUIC with a per-peer fallback to TCP (docs/operations.md).
	Transport struct {
		Mode       string   `json:"mode"`
		RaceDelay  duration `json:"race_delay"`
		ReprobeMin duration `json:"reprobe_min"`
		ReprobeMax duration `json:"reprobe_max"`
	} `json:"transport"`
	Log struct {
		Level  string `json:"level"`
		Format string `json:"format"`
	} `json:"log"`
	Limits struct {
		MaxStreamsPerPeer  int64    `json:"max_streams_per_peer"`
		StreamWindowBytes  uint64   `json:"stream_window_bytes"`
		ConnWindowBytes    uint64   `json:"conn_window_bytes"`
		DialTimeout        duration `json:"dial_timeout"`
		HandshakeTimeout   duration `json:"handshake_timeout"`
		IdleTimeout        duration `json:"idle_timeout"`
		KeepAlive          duration `json:"keep_alive"`
		LivenessTimeout    duration `json:"liveness_timeout"`
		ConnectTimeout     duration `json:"connect_timeout"`
		AppConnectTimeout  duration `json:"app_connect_timeout"`
		HeaderTimeout      duration `json:"header_timeout"`
		AppIdleTimeout     duration `json:"app_idle_timeout"`
		MaxHeaderBytes     int      `json:"max_header_bytes"`
		InboundMaxInFlight int      `json:"inbound_max_in_flight"`
		MaxHandshakes      int      `json:"max_handshakes"`
		RetryThreshold     int      `json:"retry_threshold"`
	} `json:"limits"`
	// Resilience is the outbound failure policy: failure accrual, and
	// timeouts, retries and breakers for every service ("default") or
	// one ("services").
	Resilience struct {
		FailureAccrual struct {
			ConsecutiveFailures int      `json:"consecutive_failures"`
			MinEjection         duration `json:"min_ejection"`
			MaxEjection         duration `json:"max_ejection"`
		} `json:"failure_accrual"`
		Default  servicePolicyConfig            `json:"default"`
		Services map[string]servicePolicyConfig `json:"services"`
	} `json:"resilience"`
}

// servicePolicyConfig is a service's outbound policy in the config file.
// An absent key inherits ("default", then the built-in default); a
// present zero ("0s", 0) means none.
type servicePolicyConfig struct {
	Timeout               duration `json:"timeout"`
	ResponseHeaderTimeout duration `json:"response_header_timeout"`
	MaxPending            *int     `json:"max_pending"`
	MaxRetries            *int     `json:"max_retries"`
	RetryOn               []int    `json:"retry_on"`
	RetryGRPCMethods      []string `json:"retry_grpc_methods"`
	RetryOnGRPC           []string `json:"retry_on_grpc"`
	RetryBodyBytes        *int     `json:"retry_body_bytes"`
	RetryBudget           struct {
		Ratio        *float64 `json:"ratio"`
		MinPerSecond *float64 `json:"min_per_second"`
	} `json:"retry_budget"`
}

// set reports whether the key was present in the file.
func (d duration) set() bool { return len(d.raw) > 0 && string(d.raw) != "null" }

// duration is a config-file duration such as "5s". It is checked after
// decoding (see checkDurations) rather than while decoding, so that an
// error can name its key: encoding/json does not tell an Unmarshaler
// where it is.
type duration struct {
	time.Duration
	raw json.RawMessage
}

func (d *duration) UnmarshalJSON(b []byte) error {
	d.raw = append(d.raw[:0], b...)
	return nil
}

var durationType = reflect.TypeFor[duration]()

// checkDurations parses every duration in v (a struct), naming the first
// bad one by its dotted key, e.g. "limits.idle_timeout".
func checkDurations(v reflect.Value, prefix string) error {
	t := v.Type()
	for i := range t.NumField() {
		field, fv := t.Field(i), v.Field(i)
		tag, _, _ := strings.Cut(field.Tag.Get("json"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch {
		case field.Type == durationType:
			d := fv.Addr().Interface().(*duration)
			if err := d.parse(); err != nil {
				return fmt.Errorf("%q: %w", key, err)
			}
		case field.Type.Kind() == reflect.Struct:
			if err := checkDurations(fv, key+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *duration) parse() error {
	if len(d.raw) == 0 || string(d.raw) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(d.raw, &s); err != nil {
		return fmt.Errorf("invalid duration %.40s (want a string such as \"5s\")", d.raw)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"500ms\", \"5s\", \"1m\")", s)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	d.Duration = v
	return nil
}

const maxConfigBytes = 1 << 20

func loadConfigFile(path string) (*fileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config %s is larger than %d bytes", path, maxConfigBytes)
	}
	return parseConfig(data, path)
}

func parseConfig(data []byte, name string) (*fileConfig, error) {
	var cfg fileConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("config %s: syntax error at byte %d: %w", name, se.Offset, err)
		}
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("config %s: trailing data after the JSON object", name)
	}
	if err := checkDurations(reflect.ValueOf(&cfg).Elem(), ""); err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	// checkDurations does not descend into maps.
	for svc, p := range cfg.Resilience.Services {
		if err := checkDurations(reflect.ValueOf(&p).Elem(), "resilience.services."+svc+"."); err != nil {
			return nil, fmt.Errorf("config %s: %w", name, err)
		}
		cfg.Resilience.Services[svc] = p
	}
	return &cfg, nil
}

// mapFlag collects repeated KEY=VALUE flags.
type mapFlag struct {
	want  string // the form in errors, e.g. "SERVICE=APP_ADDR"
	m     map[string]string
	order []string
}

func (f *mapFlag) String() string { return strings.Join(f.order, ",") }
func (f *mapFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" || val == "" {
		want := f.want
		if want == "" {
			want = "KEY=VALUE"
		}
		return fmt.Errorf("want %s", want)
	}
	if f.m == nil {
		f.m = make(map[string]string)
	}
	if _, dup := f.m[k]; dup {
		return fmt.Errorf("%q given twice", k)
	}
	f.m[k] = val
	f.order = append(f.order, k)
	return nil
}

// listFlag is a repeatable flag collecting its values in order.
type listFlag []string

func (f *listFlag) String() string { return strings.Join(*f, ",") }
func (f *listFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*f = append(*f, v)
	return nil
}

// newLogger builds the structured logger; the returned LevelVar changes
// its level while it runs (the admin server's /log-level).
func newLogger(w io.Writer, level slog.Level, json bool) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	lv.Set(level)
	opts := &slog.HandlerOptions{Level: lv}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}

// setFlags reports which flags were given on the command line, so they
// override the file and defaults only when set.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
