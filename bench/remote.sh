# The TCP listener against `openssl s_server -www` with the same certificate
# and key, in the same run: full TLS handshakes per second (`openssl s_time
# -new`, TLS 1.3, no client certificate on either side), and requests per
# second from one curl process (GET /1.0 on kvmboxd, over one keep-alive
# connection; s_server -www closes after every answer, so there curl
# reconnects each time, with TLS session reuse where it can).
. "$BENCHLIB"
command -v openssl >/dev/null && command -v curl >/dev/null || { echo "| remote | skipped: no openssl or curl | | |"; exit 0; }
mkdir -p state bin; chmod 711 state; ln -sf "$K" bin/kvmboxd
group_args=""; [ "$(id -u)" -ne 0 ] || group_args="--group root"
bin/kvmboxd --state-dir state $group_args --https 127.0.0.1:0 2>daemon.log &
kpid=$!
i=0; until grep -q "listening on https://" daemon.log; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "| remote | kvmboxd did not start | | |"; kill $kpid; exit 0; }; sleep 0.05; done
p1=$(sed -n 's|.*listening on https://[^ ]*:\([0-9][0-9]*\)$|\1|p' daemon.log)
# s_server cannot listen on port 0 and say which it got: try a few ports
# next to kvmboxd's until one is free.
spid=""
trap 'kill $kpid $spid 2>/dev/null || true' EXIT
for p2 in $((p1 + 1)) $((p1 + 2)) $((p1 + 3)) $((p1 + 4)) $((p1 + 5)); do
    openssl s_server -accept "127.0.0.1:$p2" -cert state/server.crt -key state/server.key -www -quiet >/dev/null 2>&1 &
    spid=$!
    i=0; until curl -sk "https://127.0.0.1:$p2/" >/dev/null 2>&1 || ! kill -0 $spid 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.05; done
    kill -0 $spid 2>/dev/null && break
done
kill -0 $spid 2>/dev/null || { echo "| remote | s_server did not start | | |"; exit 0; }

# handshakes PORT: full handshakes per second over 5 s.
handshakes() {
    openssl s_time -connect "127.0.0.1:$1" -new -time 5 2>/dev/null |
        awk '/connections in .* real seconds/ { for (i = 1; i <= NF; i++) if ($i == "connections") n = $(i - 1);
             for (i = 1; i <= NF; i++) if ($i == "real") t = $(i - 1); printf "%.0f", n / t }'
}
row "full TLS 1.3 handshakes/s (openssl s_time -new, 5 s) vs openssl s_server" "$(handshakes $p1)" "$(handshakes $p2)"

# requests PORT PATH N: requests per second from one curl process.
requests() {
    urls=$(i=0; while [ $i -lt "$3" ]; do echo "https://127.0.0.1:$1$2"; i=$((i + 1)); done)
    start=$(date +%s%N)
    # shellcheck disable=SC2086 # one argument per URL
    curl -sk --http1.1 $urls >/dev/null
    end=$(date +%s%N)
    echo "$start $end $3" | awk '{ printf "%.0f", $3 / (($2 - $1) / 1e9) }'
}
row "requests/s, 2000 GETs from one curl (kvmbox: one keep-alive connection; s_server -www: reconnects)" \
    "$(requests $p1 /1.0 2000)" "$(requests $p2 / 2000)"
