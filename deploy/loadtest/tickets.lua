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

-- done() is the one benches/bench.sh uses too: load it from beside this file.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "summary.lua")
