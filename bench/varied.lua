-- wrk script: every request different, so that no proxy can answer it from
-- what it remembers of the heads it has seen (txlb remembers 256 request
-- heads per listener).  Each request has its own query string, User-Agent
-- and session cookie, on "/", which the benchmark's nginx backends answer
-- with "ok" whatever the query.  Their responses still repeat (only Date
-- changes, once a second): `l7_pathcost.py --varied` varies those too.
--
--   wrk -t1 -c50 -d10s -s bench/varied.lua http://127.0.0.1:19111/
--
-- wrk runs this in each thread: the thread's id keeps the threads' requests
-- apart from one another.  It is a global, which setup() (run in wrk's main
-- state, after the script was loaded in each thread's) overwrites there.

thread_id = 0
local counter = 0
local threads = 0

function setup(thread)
   thread:set("thread_id", threads)
   threads = threads + 1
end

function request()
   counter = counter + 1
   local n = thread_id * 100000000 + counter
   local headers = {
      ["User-Agent"] = string.format("Mozilla/5.0 (X11; Linux x86_64) bench/%d", n % 97),
      ["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8",
      ["Accept-Language"] = "en-GB,en;q=0.5",
      -- Every value below 2^31: LuaJIT formats %x from a 32-bit integer.
      ["Cookie"] = string.format(
         "session=%08x%08x; theme=dark; seen=%d",
         n % 2147483647, (n * 7919) % 2147483647, counter
      ),
   }
   return wrk.format("GET", string.format("/?item=%d&page=%d", n, n % 7), headers)
end
