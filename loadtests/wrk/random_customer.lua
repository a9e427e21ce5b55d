-- wrk script: every request is for a random customer of a loaded population
-- (loadtests.population: ids C0000000.., phones +4930<10000000 + i>).
--
-- Environment: BENCH_KIND   classify | floor | screenpop | handoff   (default classify)
--              BENCH_CUSTOMERS  population size                      (default 10000)
--              BENCH_API_KEY    X-API-Key header                     (default the dev key)
-- At the end one line "WRK_JSON {...}" carries the figures (latencies in microseconds).

local kind = os.getenv("BENCH_KIND") or "classify"
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "10000")
local api_key = os.getenv("BENCH_API_KEY") or "router-dev-key"

local channels = {"ticket", "email", "phone", "chat", "web"}
local categories = {"technical", "billing", "account", "cancellation", "sales", "general"}
local priorities = {"low", "normal", "normal", "normal", "high", "urgent"}

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(os.time() * 1000 + seed)
   wrk.headers["X-API-Key"] = api_key
   wrk.headers["Content-Type"] = "application/json"
end

local function pick(list)
   return list[math.random(1, #list)]
end

local function classify_body()
   return string.format(
      '{"customer":{"customer_id":"C%07d"},"channel":"%s","category":"%s","priority":"%s"}',
      math.random(0, customers - 1), pick(channels), pick(categories), pick(priorities))
end

function request()
   if kind == "classify" then
      return wrk.format("POST", "/v1/classify", nil, classify_body())
   elseif kind == "floor" then
      return wrk.format("POST", "/bench/snapshot", nil, classify_body())
   elseif kind == "screenpop" then
      return wrk.format("GET", string.format("/v1/screenpop?phone=%%2B4930%08d", 10000000 + math.random(0, customers - 1)))
   else
      local body = string.format(
         '{"customer":{"customer_id":"C%07d"},"conversation":{"bot_turns":%d,"failed_intents":%d,"asked_for_human":%s,"category":"%s"}}',
         math.random(0, customers - 1), math.random(0, 9), math.random(0, 2),
         math.random() < 0.2 and "true" or "false", pick(categories))
      return wrk.format("POST", "/v1/handoff", nil, body)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"mean_us":%.1f,"max_us":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
