-- wrk script: every request is an Alertmanager notification of ALERTS new firing alerts,
-- each with an alertname and fingerprint never sent before (wrk thread id + counter + a
-- per-run prefix), so kabar takes its full path: plan, render, queue, durable commit.
-- Env: ALERTS (alerts per notification, default 1), TOKEN (bearer), RUN (unique prefix),
-- SPACES (if set, POST /alerts/s<N> round-robin over that many spaces).
-- Prints one JSON line in done(): requests, errors, non-2xx, latency percentiles (ms).

local alerts_per = tonumber(os.getenv("ALERTS") or "1")
local token = os.getenv("TOKEN") or ""
local run = os.getenv("RUN") or tostring(os.time())
local spaces = tonumber(os.getenv("SPACES") or "0")

-- Globals, not locals: wrk's thread:set/get reach a thread's globals only.
threads = {}
counter = 0
thread_id = 0
non2xx = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

local function alert(name, fp)
  return '{"status":"firing","labels":{"alertname":"' .. name ..
    '","instance":"db1:9100","job":"node","severity":"critical"},' ..
    '"annotations":{"summary":"Disk almost full on db1","description":"/var is 97% full"},' ..
    '"startsAt":"2026-11-28T00:52:38Z","endsAt":"0001-01-01T00:00:00Z",' ..
    '"generatorURL":"http://prometheus.local/graph?g0.expr=up","fingerprint":"' .. fp .. '"}'
end

function request()
  counter = counter + 1
  local base = run .. "-" .. thread_id .. "-" .. counter
  local parts = {}
  for i = 1, alerts_per do
    parts[i] = alert("Bench" .. base .. "-" .. i, base .. "-" .. i)
  end
  local body = '{"version":"4","receiver":"bench","status":"firing","alerts":[' ..
    table.concat(parts, ",") ..
    '],"groupLabels":{"alertname":"Bench' .. base .. '"},"commonLabels":{"job":"node"},' ..
    '"commonAnnotations":{},"externalURL":"http://alertmanager.local:9093",' ..
    '"groupKey":"{}:{alertname=\\"Bench' .. base .. '\\"}","truncatedAlerts":0}'
  local path = "/alerts"
  if spaces > 0 then
    path = "/alerts/s" .. ((thread_id * 7919 + counter) % spaces)
  end
  return wrk.format(nil, path, nil, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"ok_rps":%.1f,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, (summary.requests - bad) / (summary.duration / 1e6),
    bad, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
