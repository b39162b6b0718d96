-- wrk script for benches/login_flood.sh: every request is a bad login of a username never seen
-- before (so neither rate limit refuses it and each one asks for a password check); done()
-- prints one `FLOOD requests=N s401=N s429=N ...` line with the count of each status.
-- FLOOD_DELAY_MS (default 0) makes each connection wait between its requests.

local threads = {}
local id = 0

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   counts = {}
   n = 0
   pause = tonumber(os.getenv("FLOOD_DELAY_MS") or "0")
end

function request()
   n = n + 1
   local body = string.format('{"username":"flood-%d-%d","password":"wrong"}', id, n)
   return wrk.format("POST", "/_session/login", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

function delay()
   return pause
end

function done(summary, latency, requests)
   local total = {}
   for _, t in ipairs(threads) do
      for status, c in pairs(t:get("counts")) do
         total[status] = (total[status] or 0) + c
      end
   end
   io.write(string.format("FLOOD requests=%d", summary.requests))
   for status, c in pairs(total) do
      io.write(string.format(" s%d=%d", status, c))
   end
   io.write("\n")
end
