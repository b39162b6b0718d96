-- wrk script: every request carries the next ticket from a file (Authorization: Bearer), so the
-- load spreads over many sessions instead of one hot cache entry.
--
--   wrk -t2 -c64 -d10s --latency -s deploy/loadtest/tickets.lua \
--       http://127.0.0.1:6090/controller/echo/hello -- tickets.txt
--
-- The tickets file is the first argument after `--` (else $TICKETS). done() prints one
-- `SUMMARY key=value ...` line (latencies in microseconds) that run_http.sh turns into a table.

local tickets = {}
local next_index = 0
local threads = {}

function setup(thread)
   -- Each thread starts at its own offset so threads do not walk the list in lockstep.
   thread:set("offset", #threads * 7919)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] or os.getenv("TICKETS")
   if path == nil then
      error("tickets.lua: give the tickets file after `--` or in $TICKETS")
   end
   for line in io.lines(path) do
      if line ~= "" then
         tickets[#tickets + 1] = line
      end
   end
   if #tickets == 0 then
      error("tickets.lua: no tickets in " .. path)
   end
   next_index = (offset or 0) % #tickets
end

function request()
   next_index = next_index % #tickets + 1
   return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tickets[next_index] })
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "SUMMARY requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
