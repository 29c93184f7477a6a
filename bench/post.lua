-- wrk script: POST /cities with a name that no other request of the benchmark sends.
--
-- Usage: wrk -s post.lua URL -- PREFIX
-- PREFIX is unique to the run, round and app; each thread adds its own number and a counter, so
-- names stay unique across threads, apps and rounds (a duplicate would answer 409, not 201).

local next_thread = 1

function setup(thread)
   thread:set("thread_number", next_thread)
   next_thread = next_thread + 1
end

function init(args)
   prefix = args[1] or "bench"
   sent = 0
end

function request()
   sent = sent + 1
   local body = string.format(
      '{"name":"%s-%d-%d","population":%d}',
      prefix, thread_number, sent, math.random(0, 10000000)
   )
   return wrk.format("POST", "/cities", {["Content-Type"] = "application/json"}, body)
end
