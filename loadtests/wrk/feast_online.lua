-- wrk script: POST /get-online-features of Feast's `feast serve` for a random customer
-- (loadtests.bench_peer: ids C0000000.., the same ids as loadtests.population).
--
-- Environment: BENCH_CUSTOMERS       population size                          (default 100000)
--              BENCH_FEAST_FEATURES  comma-separated feature references,
--                                    e.g. customer_features:f00,customer_features:f01
-- At the end one line "WRK_JSON {...}" carries the figures (latencies in microseconds),
-- in the format of random_customer.lua.

local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "100000")
local refs = os.getenv("BENCH_FEAST_FEATURES") or "customer_features:f00"

local quoted = {}
for ref in string.gmatch(refs, "[^,]+") do
   table.insert(quoted, '"' .. ref .. '"')
end
local prefix = '{"features":[' .. table.concat(quoted, ",") .. '],"entities":{"customer_id":["'

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
end

function init(args)
   math.randomseed(os.time() * 1000 + seed)
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   local body = prefix .. string.format("C%07d", math.random(0, customers - 1)) .. '"]}}'
   return wrk.format("POST", "/get-online-features", nil, body)
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
