#!/usr/bin/env bash
# The demo that `make demo` runs, after `make elector examples` has built
# bin/elector, bin/election and bin/lock. It starts an elector on the memory
# backend on a free loopback port, three replicas of examples/election and
# three of examples/lock as separate processes, kills the leader, pauses the
# next one, and shows who leads and holds, when, and why it changed. It ends
# by itself in well under a minute and, on any exit (Ctrl-C included), stops
# every process it started. Logs stay in $BIN/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
LEASE=3s         # the elector's lease duration: short, so takeovers are quick
LOCK_NAME=test-lock
LOCK_HOLD=2s     # how long each lock replica holds the lock per round
LOCK_ROUNDS=2    # rounds per lock replica
ELECTION="test"  # the election's name (a lock too: GET /v1/locks/test)

LOGS=$BIN/demo
TRANSCRIPT=$LOGS/transcript.log
START=$SECONDS

for b in elector election lock; do
	if [[ ! -x $BIN/$b ]]; then
		echo "demo: $BIN/$b is missing; run \`make demo\` (it builds it first)" >&2
		exit 1
	fi
done
mkdir -p "$LOGS"
: >"$TRANSCRIPT"

if [[ -t 1 ]]; then
	BOLD=$'\e[1m' OFF=$'\e[0m'
else
	BOLD='' OFF=''
fi

# say narrates the next step.
say() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$OFF"; }
die() {
	printf '\n%sdemo: %s%s\n' "$BOLD" "$*" "$OFF" >&2
	exit 1
}

# now prints seconds since the epoch, with a fraction where bash has one.
now() { printf '%s\n' "${EPOCHREALTIME:-$(date +%s)}"; }
# since T prints the seconds elapsed since T (from now), to 0.01 s.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# prefix copies its input to the terminal and the transcript, each line
# behind the name of the process that wrote it. It ignores SIGINT so that a
# process shutting down on Ctrl-C can still say so.
prefix() {
	trap '' INT
	local line
	while IFS= read -r line; do
		printf '%-10s | %s\n' "$1" "$line"
		printf '%-10s | %s\n' "$1" "$line" >>"$TRANSCRIPT"
	done
}

declare -A PID=()  # name -> pid of every process started, until reaped
ORDER=()           # names in start order

# start NAME CMD...: runs CMD in the background, output prefixed with NAME.
start() {
	local name=$1
	shift
	"$@" > >(prefix "$name") 2>&1 &
	PID[$name]=$!
	ORDER+=("$name")
}

# reap NAME waits for the process NAME, which has been told to end, for up
# to 5 s, then kills it.
reap() {
	local pid=${PID[$1]:-} i
	[[ -n $pid ]] || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PID[$1]"
}

# stop NAME... sends SIGTERM to each process, then reaps them all.
stop() {
	local name
	for name in "$@"; do
		[[ -n ${PID[$name]:-} ]] || continue
		kill -CONT "${PID[$name]}" 2>/dev/null || true # a paused one too
		kill -TERM "${PID[$name]}" 2>/dev/null || true
	done
	for name in "$@"; do reap "$name"; done
}

cleanup() {
	local status=$? name clients=()
	# Finish cleaning up even if Ctrl-C is pressed again: it takes seconds.
	trap - EXIT
	trap '' INT TERM
	if ((status != 0 && ${#PID[@]} > 0)); then
		say "stopping every process the demo started"
	fi
	for name in "${ORDER[@]}"; do
		[[ $name == elector ]] || clients+=("$name")
	done
	# Clients first, so that they release before their elector goes. Bash's
	# notes on processes it had to kill go to /dev/null.
	if ((${#clients[@]})); then stop "${clients[@]}" 2>/dev/null; fi
	stop elector 2>/dev/null
	wait 2>/dev/null || true # the prefixers, which end with their process
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# http_get PATH prints the body of a 200 answer from the elector, and fails
# on anything else. Plain bash, so that the demo needs no HTTP client.
http_get() {
	local status line body=
	exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
	IFS= read -r -t 2 status <&3 || status=
	while IFS= read -r -t 2 line <&3 && [[ $line != $'\r' ]]; do :; done
	while IFS= read -r -t 2 line <&3 || [[ -n $line ]]; do
		body+=$line
		line=
	done
	exec 3<&-
	[[ $status == "HTTP/1."?" 200 "* ]] || return 1
	printf '%s\n' "$body"
}

# leader prints "identity token" of the election's current leader, and
# fails if nobody leads.
leader() {
	local body holder token
	body=$(http_get "/v1/locks/$ELECTION") || return 1
	holder=$(sed -n 's/.*"holder":"\([^"]*\)".*/\1/p' <<<"$body")
	token=$(sed -n 's/.*"token":\([0-9]*\).*/\1/p' <<<"$body")
	[[ -n $holder ]] || return 1
	printf '%s %s\n' "$holder" "$token"
}

# wait_for SECONDS WHAT CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
	local limit=$1 what=$2 i
	shift 2
	for ((i = 0; i < limit * 10; i++)); do
		if "$@" >/dev/null; then return 0; fi
		sleep 0.1
	done
	die "gave up after ${limit}s waiting for $what"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
elector_ready() { http_get /readyz >/dev/null 2>&1; }
# new_leader OLD: a leader other than OLD is in place.
new_leader() {
	local l
	l=$(leader) || return 1
	[[ ${l%% *} != "$1" ]]
}

# --- The elector -------------------------------------------------------------

PORT=
for _ in 1 2 3 4 5; do
	p=$((20000 + RANDOM % 20000))
	port_busy "$p" && continue
	PORT=$p
	say "starting an elector on the memory backend at 127.0.0.1:$PORT, lease $LEASE (log: $LOGS/elector.log)"
	# In a process group of its own (set -m), so that Ctrl-C reaches only
	# the clients: they release their locks, then cleanup stops the elector.
	set -m
	"$BIN/elector" --backend memory --listen "127.0.0.1:$PORT" \
		--identity demo-elector --lease-duration "$LEASE" \
		--log-format console --log-level info >"$LOGS/elector.log" 2>&1 &
	PID[elector]=$!
	set +m
	ORDER+=(elector)
	for ((i = 0; i < 100; i++)); do
		elector_ready && break
		kill -0 "${PID[elector]}" 2>/dev/null || break
		sleep 0.1
	done
	elector_ready && break
	echo "the elector did not come up on port $PORT; its log says:"
	tail -n 5 "$LOGS/elector.log"
	stop elector
	PORT=
	grep -q 'in use' "$LOGS/elector.log" || break # only a taken port is worth a retry
done
[[ -n $PORT ]] || die "could not start an elector; see $LOGS/elector.log"
grep -m1 'MEMORY BACKEND' "$LOGS/elector.log" | cut -f2- | tr '\t' ' ' | prefix elector || true
echo "   The memory backend keeps locks in the elector's own memory: every process"
echo "   below shares this one elector, as replicas on one machine would."
export MPSYNC_ELECTOR=http://127.0.0.1:$PORT
echo "   Clients find it through MPSYNC_ELECTOR=$MPSYNC_ELECTOR"

# --- An election -------------------------------------------------------------

say "starting 3 replicas of examples/election, all running for leader of \"$ELECTION\""
for i in 1 2 3; do
	start "election-$i" "$BIN/election" -name "$ELECTION" -identity "election-$i"
done
wait_for 10 "a leader" leader
read -r LEADER TOKEN < <(leader)
sleep 0.5 # let the followers print whom they follow
say "$LEADER leads with fencing token $TOKEN (the elector says so too: GET /v1/locks/$ELECTION)"

# --- A lock passed around ----------------------------------------------------

say "starting 3 replicas of examples/lock on the lock \"$LOCK_NAME\": each takes it, holds it $LOCK_HOLD, releases it, $LOCK_ROUNDS times; the others wait their turn"
LOCKS=()
for i in 1 2 3; do
	start "lock-$i" "$BIN/lock" -name "$LOCK_NAME" -identity "lock-$i" -hold "$LOCK_HOLD" -rounds "$LOCK_ROUNDS"
	LOCKS+=("lock-$i")
done
sleep 3 # watch the lock change hands once or twice

# --- Crash the leader --------------------------------------------------------

say "killing the leader $LEADER (pid ${PID[$LEADER]}) with SIGKILL: no chance to release; the elector sees its connection drop and frees the lock"
T0=$(now)
kill -KILL "${PID[$LEADER]}"
wait "${PID[$LEADER]}" 2>/dev/null || true # quietly: no "Killed" from bash
unset "PID[$LEADER]"
wait_for 10 "a new leader after killing $LEADER" new_leader "$LEADER"
read -r NEXT TOKEN2 < <(leader)
say "$NEXT took over $(since "$T0")s after the kill, with token $TOKEN2 (> $TOKEN)"
sleep 1

# --- Pause the new leader ----------------------------------------------------

say "pausing the leader $NEXT (pid ${PID[$NEXT]}) with SIGSTOP: it stops renewing; its leadership ends on its own local timer, and $LEASE (the lease) after its last renewal another replica takes over"
T0=$(now)
kill -STOP "${PID[$NEXT]}"
wait_for 15 "a new leader after pausing $NEXT" new_leader "$NEXT"
read -r THIRD TOKEN3 < <(leader)
say "$THIRD took over $(since "$T0")s after the pause, with token $TOKEN3 (> $TOKEN2); resuming $NEXT with SIGCONT: it finds its term over"
kill -CONT "${PID[$NEXT]}"
sleep 1

# --- The lock replicas finish ------------------------------------------------

say "waiting for the lock replicas to finish their rounds"
for name in "${LOCKS[@]}"; do
	for ((i = 0; i < 300; i++)); do
		kill -0 "${PID[$name]}" 2>/dev/null || break
		sleep 0.1
	done
	[[ $i -lt 300 ]] || die "$name did not finish within 30s"
	wait "${PID[$name]}" || die "$name failed"
	unset "PID[$name]"
done

# --- What happened -----------------------------------------------------------

# tokens PATTERN prints the tokens of the transcript's lines matching
# PATTERN, in the order the lines were written.
tokens() { sed -n "s/.*$1 (token \([0-9]*\)).*/\1/p" "$TRANSCRIPT" | tr '\n' ' '; }
increasing() {
	local prev=0 t
	for t in $1; do
		((t > prev)) || return 1
		prev=$t
	done
}
LOCK_TOKENS=$(tokens "acquired lock $LOCK_NAME")
LEADER_TOKENS=$(tokens "I am the leader")
say "what happened"
echo "   lock \"$LOCK_NAME\" acquired with tokens:   $LOCK_TOKENS"
echo "   leaders of \"$ELECTION\" elected with tokens: $LEADER_TOKENS"
increasing "$LOCK_TOKENS" || die "lock tokens are not increasing: $LOCK_TOKENS"
increasing "$LEADER_TOKENS" || die "leader tokens are not increasing: $LEADER_TOKENS"
echo "   Each acquisition has a greater token than every one before it: a store"
echo "   that remembers the highest token it has seen can refuse a stale holder."

say "stopping the election replicas with SIGTERM, the followers first, then the leader (it releases the lock), then the elector"
read -r LAST _ < <(leader) || LAST=
FOLLOWERS=()
for name in "${ORDER[@]}"; do
	if [[ $name == election-* && $name != "$LAST" && -n ${PID[$name]:-} ]]; then FOLLOWERS+=("$name"); fi
done
if ((${#FOLLOWERS[@]})); then stop "${FOLLOWERS[@]}"; fi
if [[ -n $LAST ]]; then stop "$LAST"; fi
stop elector
say "demo done in $((SECONDS - START))s; logs in $LOGS/"
