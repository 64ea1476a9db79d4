package scenario

import (
	"math"
	"testing"
)

// fortioSample is the shape of "fortio load -json" (1.68.2), trimmed to a
// few of its keys plus some it has that we ignore.
const fortioSample = `{
  "RunType": "HTTP",
  "Labels": "",
  "StartTime": "2026-11-22T03:05:11.123Z",
  "RequestedQPS": "1000",
  "RequestedDuration": "10s",
  "ActualQPS": 999.8012,
  "ActualDuration": 10001988230,
  "NumThreads": 16,
  "Version": "1.68.2",
  "DurationHistogram": {
    "Count": 10000,
    "Min": 0.000071231,
    "Max": 0.0123,
    "Sum": 1.6,
    "Avg": 0.00016,
    "StdDev": 0.0001,
    "Data": [{"Start": 0.000071231, "End": 0.00008, "Percent": 1.2, "Count": 120}],
    "Percentiles": [
      {"Percentile": 50, "Value": 0.000150123},
      {"Percentile": 75, "Value": 0.0002},
      {"Percentile": 90, "Value": 0.00025},
      {"Percentile": 99, "Value": 0.0009876},
      {"Percentile": 99.9, "Value": 0.004}
    ]
  },
  "ErrorsDurationHistogram": {"Count": 2, "Data": null},
  "Exactly": 0,
  "Uniform": true,
  "Resolution": 0.00001,
  "RetCodes": {"200": 9995, "503": 3, "-1": 2},
  "URL": "http://127.0.0.1:8080/"
}`

func TestParseFortio(t *testing.T) {
	f, err := ParseFortio([]byte(fortioSample))
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != "1.68.2" || f.RequestedQPS != 1000 || f.Threads != 16 || !f.Uniform || f.Count != 10000 {
		t.Errorf("header fields: %+v", f)
	}
	if math.Abs(f.ActualQPS-999.8012) > 1e-9 || math.Abs(f.ResolutionUS-10) > 1e-9 {
		t.Errorf("qps %v resolution %v µs", f.ActualQPS, f.ResolutionUS)
	}
	for _, c := range []struct{ p, us float64 }{{50, 150.1}, {90, 250}, {99, 987.6}, {99.9, 4000}} {
		if got := f.Percentile(c.p); math.Abs(got-c.us) > 0.05 {
			t.Errorf("p%v = %v µs, want %v", c.p, got, c.us)
		}
	}
	if !math.IsNaN(f.Percentile(99.99)) {
		t.Error("a percentile fortio did not report is not NaN")
	}
	if math.Abs(f.MaxUS-12300) > 1e-6 || math.Abs(f.MeanUS-160) > 1e-6 || math.Abs(f.MinUS-71.231) > 1e-6 {
		t.Errorf("min/max/mean: %v %v %v", f.MinUS, f.MaxUS, f.MeanUS)
	}
	if f.Errors != 5 { // 3 × 503 and 2 × no answer (-1)
		t.Errorf("errors = %d, want 5", f.Errors)
	}
}

func TestParseFortioVariants(t *testing.T) {
	f, err := ParseFortio([]byte(`{"RequestedQPS": "max", "DurationHistogram": {"Count": 1, "Percentiles": []}, "ErrorsDurationHistogram": {"Count": 4}, "RetCodes": {"200": 1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.RequestedQPS != 0 || f.Errors != 4 {
		t.Errorf("max qps / errors histogram: %+v", f)
	}
	if f, err := ParseFortio([]byte(`{"RequestedQPS": 250, "DurationHistogram": {"Count": 1}}`)); err != nil || f.RequestedQPS != 250 {
		t.Errorf("numeric RequestedQPS: %+v %v", f, err)
	}
	for _, bad := range []string{``, `{`, `{"RunType": "HTTP"}`, `[]`} {
		if _, err := ParseFortio([]byte(bad)); err == nil {
			t.Errorf("ParseFortio(%q) succeeded", bad)
		}
	}
}
