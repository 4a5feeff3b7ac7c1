-- wrk script: every request is the next precomputed grant path, each thread
-- taking every n-th line of the file; 200 answers' order numbers are kept
-- so the driver can check them against the store.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  thread:set("nthreads", 0)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local file = args[1]
  local n = tonumber(args[2])
  paths = {}
  local i = 0
  for line in io.lines(file) do
    if i % n == id then
      paths[#paths + 1] = line
    end
    i = i + 1
  end
  next_path = 1
  wrapped = 0
  orders = {}
  norders = 0
end

function request()
  local path = paths[next_path]
  next_path = next_path + 1
  if next_path > #paths then
    next_path = 1
    wrapped = wrapped + 1
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status == 200 then
    local order = string.match(body, '"order_number":"([%d%-]+)"')
    if order then
      norders = norders + 1
      orders[norders] = order
    end
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("BENCH_ORDERS_FILE"), "w")
  local wraps = 0
  for _, thread in ipairs(threads) do
    local got = thread:get("orders")
    wraps = wraps + thread:get("wrapped")
    for _, order in ipairs(got) do
      out:write(order, "\n")
    end
  end
  out:close()
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "non_2xx": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), wraps))
end
