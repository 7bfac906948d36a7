package faults

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// httpc is the harness's client for the electors' /readyz and lock state:
// short timeouts, since an elector may be stopped.
var httpc = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// ready reports whether the elector at addr answers /readyz with 200.
func ready(addr string) bool {
	resp, err := httpc.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// lockHolder asks the elector at addr who holds lock name (PROTOCOL.md's
// GET /v1/locks/{name}); "" if nobody.
func lockHolder(addr, name string) (string, error) {
	resp, err := httpc.Get("http://" + addr + "/v1/locks/" + name)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /v1/locks/%s: %s", name, resp.Status)
	}
	var st struct{ Holder string }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	return strings.TrimSpace(st.Holder), nil
}
