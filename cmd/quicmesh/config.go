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
	"strings"
	"time"
)

// fileConfig is the sidecar's config file (JSON). Every key is documented
// in docs/operations.md; flags override the file.
type fileConfig struct {
	Identity struct {
		Cert        string `json:"cert"`
		Key         string `json:"key"`
		Bundle      string `json:"bundle"`
		TrustDomain string `json:"trust_domain"` // peers we accept; default: our own
	} `json:"identity"`
	Inbound struct {
		Listen string            `json:"listen"`
		Routes map[string]string `json:"routes"`
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
	} `json:"outbound"`
	Discovery struct {
		Static string `json:"static"`
	} `json:"discovery"`
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Debug struct {
		QlogDir string `json:"qlog_dir"`
	} `json:"debug"`
	Log struct {
		Level  string `json:"level"`
		Format string `json:"format"`
	} `json:"log"`
	Limits struct {
		MaxStreamsPerPeer  int64    `json:"max_streams_per_peer"`
		StreamWindowBytes  uint64   `json:"stream_window_bytes"`
		ConnWindowBytes    uint64   `json:"conn_window_bytes"`
		HandshakeTimeout   duration `json:"handshake_timeout"`
		IdleTimeout        duration `json:"idle_timeout"`
		KeepAlive          duration `json:"keep_alive"`
		ConnectTimeout     duration `json:"connect_timeout"`
		AppConnectTimeout  duration `json:"app_connect_timeout"`
		HeaderTimeout      duration `json:"header_timeout"`
		AppIdleTimeout     duration `json:"app_idle_timeout"`
		MaxHeaderBytes     int      `json:"max_header_bytes"`
		InboundMaxInFlight int      `json:"inbound_max_in_flight"`
		MaxHandshakes      int      `json:"max_handshakes"`
		RetryThreshold     int      `json:"retry_threshold"`
	} `json:"limits"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
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
	return &cfg, nil
}

// mapFlag collects repeated KEY=VALUE flags.
type mapFlag struct {
	m     map[string]string
	order []string
}

func (f *mapFlag) String() string { return strings.Join(f.order, ",") }
func (f *mapFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" || val == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
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

// newLogger builds the structured logger from level and format names.
func newLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if level != "" {
		if err := lv.UnmarshalText([]byte(level)); err != nil {
			return nil, nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
		}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	default:
		return nil, nil, fmt.Errorf("log format %q: want text or json", format)
	}
}

// setFlags reports which flags were given on the command line, so they
// override the file and defaults only when set.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
