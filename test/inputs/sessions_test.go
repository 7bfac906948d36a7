package inputs

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openAcquire takes name for identity over a raw streamed request and
// returns its acquired event and a func that closes the stream.
func openAcquire(t *testing.T, base, name, identity string) (wire.Event, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/v1/locks/"+name+"/acquire",
		strings.NewReader(`{"identity":"`+identity+`"}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		require.NoError(t, err)
	}
	closeIt := func() { cancel(); resp.Body.Close() }
	require.Equal(t, http.StatusOK, resp.StatusCode, "acquire %s", name)
	ev, err := nextOf(bufio.NewReader(resp.Body), wire.EventAcquired)
	require.NoError(t, err)
	return ev, closeIt
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestSessionsCannotBeGuessed: a local process that takes a throwaway lock
// to see what a session id looks like, then posts renew and release for
// ids it guesses (a counter, random ids of the right shape), for its own
// released session, and for its live session on another lock, gets 404
// unknown_session for every one, and a healthy SDK holder of the lock
// under attack, locking and unlocking all along, sees no loss.
func TestSessionsCannotBeGuessed(t *testing.T) {
	p := startElector(t)
	base := "http://" + p.Addr
	victim := startHealthyHolder(t, p.Addr, "victim", 300*time.Millisecond)
	victim.nextTerm(t)

	bait, closeBait := openAcquire(t, base, "bait", "attacker")
	require.Len(t, bait.Session, 32, "session id %q: want 32 hex digits (128 bits)", bait.Session)
	_, err := hex.DecodeString(bait.Session)
	require.NoError(t, err, "session id %q is not hex", bait.Session)

	guesses := []string{bait.Session} // the attacker's own live session, on another lock
	for i := range 200 {
		guesses = append(guesses, fmt.Sprintf("s%d", i), fmt.Sprint(i))
	}
	for range 500 {
		guesses = append(guesses, randomID())
	}
	// Near misses of a real id: one hex digit changed.
	for i := range len(bait.Session) {
		b := []byte(bait.Session)
		b[i] = "0123456789abcdef"[(strings.IndexByte("0123456789abcdef", b[i])+1)%16]
		guesses = append(guesses, string(b))
	}

	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	attack := func(t *testing.T, ids []string) {
		for _, id := range ids {
			for _, op := range []string{"renew", "release"} {
				a := send(t, hc, "POST", base+"/v1/locks/victim/"+op, `{"session":"`+id+`"}`)
				if !assert.Equal(t, http.StatusNotFound, a.status, "%s %q: %s", op, id, a.body) {
					return
				}
				if !assert.Equal(t, wire.CodeUnknownSession, a.code(), "%s %q: %s", op, id, a.body) {
					return
				}
			}
		}
	}
	t.Run("guessed and foreign ids", func(t *testing.T) { attack(t, guesses) })

	// Replay: the bait's session after its release.
	a := send(t, hc, "POST", base+"/v1/locks/bait/release", `{"session":"`+bait.Session+`"}`)
	require.Equal(t, http.StatusOK, a.status, "release of the attacker's own session: %s", a.body)
	closeBait()
	t.Run("replayed id", func(t *testing.T) {
		for _, lock := range []string{"bait", "victim"} {
			for _, op := range []string{"renew", "release"} {
				a := send(t, hc, "POST", base+"/v1/locks/"+lock+"/"+op, `{"session":"`+bait.Session+`"}`)
				assert.Equal(t, http.StatusNotFound, a.status, "%s on %s of a released session: %s", op, lock, a.body)
				assert.Equal(t, wire.CodeUnknownSession, a.code(), "%s on %s: %s", op, lock, a.body)
			}
		}
	})

	// The victim went on through all that: it takes yet another term, and
	// no term of it ended other than by its own Unlock.
	victim.nextTerm(t)
	require.NoError(t, victim.stop())
}
