-- wrk script of the small-file figure (benchmarks/wrk.py runs it):
--   wrk -t T -c C -d 3600s --timeout 60s -s small_files.lua URL -- TOKENS COUNT SIZE
-- TOKENS: a file with one JWT per line (64 distinct ones), rotated request by request;
-- COUNT: uploads in all, split evenly between the threads; SIZE: bytes per file.
-- Each request is a multipart POST to /api/v1/files/upload: a `compression_algorithm`
-- field (none), then the `file` part; the file is SIZE random bytes whose first 16
-- are a per-request tag, so that no two uploads are the same. Each thread counts
-- its responses and stops itself (wrk.thread:stop()) once it has its share; statuses
-- other than 201 are counted, the first one is kept for the report. done() prints
-- one line `RESULT {json}` for the harness.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local tokens = {}
local share = 0
local sent = 0
local responses = 0
local created = 0
local bad = 0
local first_bad = ""
local head, rest, tail, ctype
local path = "/api/v1/files/upload"

function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then table.insert(tokens, line) end
   end
   local total = tonumber(args[2])
   local size = tonumber(args[3])
   local nthreads = tonumber(args[4])
   share = math.floor(total / nthreads)
   if id < total % nthreads then share = share + 1 end
   math.randomseed(1000 + id)
   local bytes = {}
   for i = 1, size - 16 do bytes[i] = string.char(math.random(0, 255)) end
   rest = table.concat(bytes)
   local boundary = "----wrkSmallFiles" .. string.format("%08x", math.random(0, 0x7fffffff))
   ctype = "multipart/form-data; boundary=" .. boundary
   head = "--" .. boundary .. "\r\n"
      .. "Content-Disposition: form-data; name=\"compression_algorithm\"\r\n\r\nnone\r\n"
      .. "--" .. boundary .. "\r\n"
      .. "Content-Disposition: form-data; name=\"file\"; filename=\"small.bin\"\r\n"
      .. "Content-Type: application/octet-stream\r\n\r\n"
   tail = "\r\n--" .. boundary .. "--\r\n"
   wrk.thread:set("share", share)
end

function request()
   sent = sent + 1
   local token = tokens[((sent + id * 17) % #tokens) + 1]
   local body = head .. string.format("%04x%012x", id, sent) .. rest .. tail
   return wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = ctype,
   }, body)
end

function response(status, headers, body)
   responses = responses + 1
   if status == 201 then
      created = created + 1
   else
      bad = bad + 1
      if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 300) end
   end
   if responses >= share then
      wrk.thread:set("responses", responses)
      wrk.thread:set("created", created)
      wrk.thread:set("bad", bad)
      wrk.thread:set("first_bad", first_bad)
      wrk.thread:set("sent", sent)
      wrk.thread:stop()
   end
end

local function jstr(s)
   return "\"" .. string.gsub(tostring(s), "[%c\"\\]", function(c)
      return string.format("\\u%04x", string.byte(c))
   end) .. "\""
end

function done(summary, latency, requests)
   local responses_all, created_all, bad_all, sent_all = 0, 0, 0, 0
   local firsts = {}
   for _, t in ipairs(threads) do
      responses_all = responses_all + (t:get("responses") or 0)
      created_all = created_all + (t:get("created") or 0)
      bad_all = bad_all + (t:get("bad") or 0)
      sent_all = sent_all + (t:get("sent") or 0)
      local fb = t:get("first_bad")
      if fb and fb ~= "" then table.insert(firsts, fb) end
   end
   local e = summary.errors
   io.write("RESULT {",
      "\"responses\":", responses_all,
      ",\"created\":", created_all,
      ",\"non_201\":", bad_all,
      ",\"sent\":", sent_all,
      ",\"first_non_201\":", jstr(firsts[1] or ""),
      ",\"wrk_requests\":", summary.requests,
      ",\"errors\":{\"connect\":", e.connect, ",\"read\":", e.read, ",\"write\":", e.write,
      ",\"status\":", e.status, ",\"timeout\":", e.timeout, "}",
      ",\"latency_us\":{\"p50\":", latency:percentile(50),
      ",\"p90\":", latency:percentile(90),
      ",\"p99\":", latency:percentile(99),
      ",\"p999\":", latency:percentile(99.9),
      ",\"max\":", latency.max,
      ",\"mean\":", latency.mean, "}",
      "}\n")
end
