package scenario

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// FortioResult is the part of fortio's JSON result ("fortio load -json")
// the report uses, with latencies converted to microseconds.
type FortioResult struct {
	Version      string  `json:"version"`
	RequestedQPS float64 `json:"requested_qps"`
	ActualQPS    float64 `json:"actual_qps"`
	Threads      int     `json:"threads"`
	Uniform      bool    `json:"uniform"`
	// ResolutionUS is the histogram bucket width fortio used (its -r).
	ResolutionUS float64 `json:"resolution_us"`
	// Count is the number of calls, failed ones included.
	Count int64 `json:"count"`
	// Errors counts calls that failed or did not answer 200.
	Errors      int64             `json:"errors"`
	RetCodes    map[string]int64  `json:"ret_codes,omitempty"`
	MinUS       float64           `json:"min_us"`
	MaxUS       float64           `json:"max_us"`
	MeanUS      float64           `json:"mean_us"`
	Percentiles []FortioPercentle `json:"percentiles"`
}

// FortioPercentle is one percentile of fortio's latency histogram.
type FortioPercentle struct {
	Percentile float64 `json:"p"`
	US         float64 `json:"us"`
}

// Percentile returns fortio's value for percentile p (e.g. 99.9) in µs,
// or NaN if fortio did not report it.
func (f *FortioResult) Percentile(p float64) float64 {
	for _, x := range f.Percentiles {
		if math.Abs(x.Percentile-p) < 1e-9 {
			return x.US
		}
	}
	return math.NaN()
}

// fortioJSON mirrors the keys of fortio's result that we read. Durations
// are in seconds, except ActualDuration (nanoseconds).
type fortioJSON struct {
	Version           string          `json:"Version"`
	RequestedQPS      json.RawMessage `json:"RequestedQPS"` // "max" or a number, as a string
	ActualQPS         float64         `json:"ActualQPS"`
	NumThreads        int             `json:"NumThreads"`
	Uniform           bool            `json:"Uniform"`
	Resolution        float64         `json:"Resolution"`
	RetCodes          map[string]int64
	DurationHistogram *struct {
		Count       int64
		Min, Max    float64
		Avg         float64
		Percentiles []struct {
			Percentile float64
			Value      float64
		}
	}
	ErrorsDurationHistogram *struct{ Count int64 }
}

// ParseFortio reads fortio's JSON result.
func ParseFortio(data []byte) (*FortioResult, error) {
	var j fortioJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("fortio result: %w", err)
	}
	if j.DurationHistogram == nil {
		return nil, fmt.Errorf("fortio result: no DurationHistogram")
	}
	h := j.DurationHistogram
	f := &FortioResult{
		Version:      j.Version,
		RequestedQPS: parseLooseFloat(j.RequestedQPS),
		ActualQPS:    j.ActualQPS,
		Threads:      j.NumThreads,
		Uniform:      j.Uniform,
		ResolutionUS: j.Resolution * 1e6,
		Count:        h.Count,
		RetCodes:     j.RetCodes,
		MinUS:        h.Min * 1e6,
		MaxUS:        h.Max * 1e6,
		MeanUS:       h.Avg * 1e6,
	}
	for _, p := range h.Percentiles {
		f.Percentiles = append(f.Percentiles, FortioPercentle{Percentile: p.Percentile, US: math.Round(p.Value*1e7) / 10})
	}
	// Calls that got no HTTP answer land in the errors histogram with
	// code -1; answers other than 200 are failures too.
	for code, n := range j.RetCodes {
		if code != "200" {
			f.Errors += n
		}
	}
	if f.Errors == 0 && j.ErrorsDurationHistogram != nil {
		f.Errors = j.ErrorsDurationHistogram.Count
	}
	return f, nil
}

// parseLooseFloat reads a JSON number or a string holding one; anything
// else ("max") is 0.
func parseLooseFloat(raw json.RawMessage) float64 {
	var x float64
	if json.Unmarshal(raw, &x) == nil {
		return x
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if v, err := strconv.ParseFloat(s, 64); err == nil {
			return v
		}
	}
	return 0
}
