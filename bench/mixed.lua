-- P4 for wrk: 3 reads for each write of small files. Each write has new bytes, so each keeps a
-- history version. Each wrk thread works on its own four files (made before the run); the
-- token and the files' URL come from the environment.
local token = os.getenv("CC_TOKEN")
local files = os.getenv("CC_FILES")
local threads = 0

function setup(thread)
  thread:set("thread", threads)
  threads = threads + 1
end

function init(args)
  n = 0
  body = string.rep("y", 1012)  -- each write changes the file: history keeps a version
  headers = { ["Authorization"] = token }
end

function request()
  n = n + 1
  local path = files .. "/mixed-" .. thread .. "-" .. (n % 4) .. ".txt"
  if n % 4 == 0 then
    return wrk.format("PUT", path, headers, string.format("%012d", n) .. body)
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %d %d %d %d\n", summary.requests, summary.duration,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(99)))
end
