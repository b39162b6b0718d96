-- wrk script for benches/bench.sh, and the summary printer tickets.lua loads: requests stay
-- wrk's static ones (no per-request Lua, so the client costs the same in every run); done()
-- prints one `SUMMARY key=value ...` line, with latencies in microseconds from the same
-- histogram `--latency` prints.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "SUMMARY requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
