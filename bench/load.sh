#!/bin/sh
# Load and TLS figures for `make bench`, from bench/loadgen.rs against one
# kvmboxd (TLS on loopback, slots for 1,000 held connections), next to
# `openssl s_server` with the same certificate where it can stand as a peer:
# - 100 clients × 100 requests (reads mixed with instance creation, config
#   changes and deletion) on the Unix socket and over TLS: requests/s,
#   latency, errors, the daemon's descriptors and RSS before and after;
# - full TLS 1.3 handshakes (one GET each, no client certificate, no
#   resumption) per second of the SERVER's CPU time (/proc/PID/stat: the
#   client shares the two cores), kvmboxd vs s_server -www;
# - requests/s on one keep-alive TLS connection (GET /1.0), next to
#   nginx serving the same answer;
# - memory per open TLS connection: RSS with 1,000 idle handshaken
#   connections minus the RSS before, divided;
# - root's GET /1.0 on the Unix socket while slowloris and idle
#   connections flood the TLS listener.
# Prints table rows: | what | kvmbox | peer | ratio |
. "$BENCHLIB"
command -v openssl >/dev/null || { echo "| load | skipped: no openssl | | |"; exit 0; }
LOADLIB=$(dirname "$BENCHLIB")/load.lib
. "$LOADLIB"
load_build --release || { echo "| load | loadgen did not build | | |"; exit 0; }
load_daemon --max-connections 4096 || { echo "| load | kvmboxd did not start | | |"; exit 0; }
spid="" npid=""
trap 'kill $spid $npid 2>/dev/null || true; load_end' EXIT
lg() { "$LG" --cert "$CERT" --key "$KEY" --kernel "$PWD/vmlinuz" "$@"; }
f() { lg_get "$1" "$2" | awk '{ printf "%.0f", $1 }'; }
f2() { lg_get "$1" "$2" | awk '{ printf "%.2f", $1 }'; }

for t in unix tcp; do
    case $t in
        unix) target=unix:state/unix.socket; label="Unix socket (TLS inside)" ;;
        tcp) target=tcp:127.0.0.1:$port; label="TLS over TCP, keep-alive" ;;
    esac
    lg --target "$target" --clients 100 --requests 100 --mix mixed --pid "$kpid" >$t.txt 2>$t.err
    echo "| load, 100 clients × 100 requests, $label, reads + create/config/delete: requests/s (p50 / p99 ms; errors) | $(f $t.txt requests_per_s) ($(f2 $t.txt p50_ms) / $(f2 $t.txt p99_ms) ms; $(f $t.txt errors) errors) | | |"
    echo "| … daemon fds before → after; RSS KiB before → after | $(f $t.txt fds_before) → $(f $t.txt fds_after); $(f $t.txt rss_kib_before) → $(f $t.txt rss_kib_after) | | |"
done

# s_server cannot listen on port 0 and say which it got: try a few ports
# next to kvmboxd's until one is free.
for p2 in $((port + 1)) $((port + 2)) $((port + 3)) $((port + 4)) $((port + 5)); do
    openssl s_server -accept "127.0.0.1:$p2" -cert state/server.crt -key state/server.key -www -quiet >/dev/null 2>&1 &
    spid=$!
    i=0; until "$LG" --target "tcp:127.0.0.1:$p2" --clients 1 --requests 1 --fresh --mix get10 >/dev/null 2>&1 ||
        ! kill -0 $spid 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.05; done
    kill -0 $spid 2>/dev/null && break
done
# handshakes TARGET PID OUT: 1 client, 2,000 fresh connections.
handshakes() { "$LG" --target "$1" --clients 1 --requests 2000 --fresh --mix get10 --pid "$2" >"$3" 2>&1; }
handshakes "tcp:127.0.0.1:$port" "$kpid" hk.txt
handshakes "tcp:127.0.0.1:$p2" "$spid" hs.txt
per_cpu() { lg_get "$1" server_cpu_us_per_request | awk '{ if ($1 > 0) printf "%.0f", 1e6 / $1; else print 0 }'; }
row "full TLS 1.3 handshakes (+ one GET each) per second of server CPU, vs openssl s_server -www" "$(per_cpu hk.txt)" "$(per_cpu hs.txt)"
row "… server CPU µs per handshake" "$(f hk.txt server_cpu_us_per_request)" "$(f hs.txt server_cpu_us_per_request)"
row "… wall handshakes/s, one client process sharing the cores" "$(f hk.txt requests_per_s)" "$(f hs.txt requests_per_s)"

# The keep-alive peer: nginx, one process, TLS 1.3 with the daemon's key
# and certificate, answering GET /1.0 with the daemon's own answer from a
# file. Only when installed: it is not among scripts/deps.sh's packages,
# since Debian starts its service on port 80 when it is installed.
if command -v nginx >/dev/null && command -v curl >/dev/null; then
    mkdir -p ng/www/1.0 ng/tmp
    curl -sfk --cert "$CERT" --key "$KEY" "https://127.0.0.1:$port/1.0" >ng/www/1.0/index.json
    for p3 in $((port + 6)) $((port + 7)) $((port + 8)) $((port + 9)) $((port + 10)); do
        cat >ng/nginx.conf <<EOF
master_process off;
daemon off;
pid $PWD/ng/nginx.pid;
error_log $PWD/ng/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $PWD/ng/tmp;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$p3 ssl;
        ssl_certificate $PWD/state/server.crt;
        ssl_certificate_key $PWD/state/server.key;
        ssl_protocols TLSv1.3;
        root $PWD/ng/www;
        location = /1.0 { default_type application/json; try_files /1.0/index.json =404; }
    }
}
EOF
        nginx -c "$PWD/ng/nginx.conf" -p "$PWD/ng" 2>/dev/null &
        npid=$!
        i=0; until "$LG" --target "tcp:127.0.0.1:$p3" --clients 1 --requests 1 --mix get10 >/dev/null 2>&1 ||
            ! kill -0 $npid 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.05; done
        kill -0 $npid 2>/dev/null && break
        npid=""
    done
fi
# keepalive DEPTH: 20,000 GET /1.0 on one connection, DEPTH sent before
# their answers are read (1: one at a time), from kvmboxd and from nginx.
keepalive() {
    lg --target "tcp:127.0.0.1:$port" --clients 1 --requests 20000 --path /1.0 --pipeline "$1" --pid "$kpid" >ka.txt 2>&1
    : >kn.txt
    [ -z "$npid" ] || lg --target "tcp:127.0.0.1:$p3" --clients 1 --requests 20000 --path /1.0 --pipeline "$1" --pid "$npid" >kn.txt 2>&1
    peer=$(f kn.txt requests_per_s)
    row "requests/s on one keep-alive TLS connection, GET /1.0, $2, vs nginx (one process) serving the same answer from a file" \
        "$(f ka.txt requests_per_s)" "${peer:-not installed}"
    row "… server CPU µs per request" "$(f2 ka.txt server_cpu_us_per_request)" "$(f2 kn.txt server_cpu_us_per_request)"
}
keepalive 1 "each answer read before the next request"
keepalive 16 "16 requests sent before their answers are read (pipelined)"

# Memory per connection: 1,000 handshaken connections that each sent one
# request, held idle.
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
mkfifo hold.in
lg --target "tcp:127.0.0.1:$port" --hold 1000 <hold.in >hold.txt 2>&1 &
hpid=$!
exec 3>hold.in
r0=$(rss "$kpid")
i=0; until grep -q "^held" hold.txt; do i=$((i + 1)); [ $i -lt 600 ] || break; sleep 0.1; done
sleep 1
r1=$(rss "$kpid")
exec 3>&-
wait $hpid 2>/dev/null || true
echo "| memory per open TLS connection (RSS with 1,000 idle handshaken connections − before, ÷ 1,000) | $(echo "$r0 $r1" | awk '{ printf "%.1f KiB", ($2 - $1) / 1000 }') ($(sed -n 1p hold.txt)) | | |"

"$LG" --target unix:state/unix.socket --cert "$CERT" --key "$KEY" --slowloris 200 --idle 200 \
    --flood-target "tcp:127.0.0.1:$port" --flood-secs 20 >flood.txt 2>&1
echo "| root's GET /1.0 on the Unix socket during 20 s of 200 slowloris + 200 idle TLS connections: p50 / max ms (answered, failed) | $(f2 flood.txt probe_p50_ms) / $(f2 flood.txt probe_max_ms) ($(f flood.txt probe_ok), $(f flood.txt probe_errors)) | | |"
