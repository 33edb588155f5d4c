// The workspace's HTTP client: the API key (sessionStorage, this tab only, never in a URL),
// JSON requests with the service's error body, streamed uploads, job events, downloads.

const KEY = "scbridge.apiKey";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.hint = error.hint || "";
    this.requestId = error.request_id || "";
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const error = body && body.error ? body.error
    : { code: "http_error", message: `the server answered ${response.status} ${response.statusText}.`, hint: "" };
  return new ApiError(response.status, error);
}

export async function request(path, { method = "GET", json, signal } = {}) {
  const headers = authHeaders(json === undefined ? {} : { "Content-Type": "application/json" });
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { code: "network_error", message: "the server cannot be reached.",
                            hint: "check that scbridge serve is still running" });
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

// Upload with progress (fetch has no upload progress): the raw file as the body.
export function upload(file, onProgress, maxBytes) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/workspace/uploads?filename=${encodeURIComponent(file.name)}`);
    for (const [name, value] of Object.entries(authHeaders({ "Content-Type": "application/octet-stream" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, (body && body.error) || { message: `upload failed (${xhr.status})` }));
    };
    xhr.onerror = () => {
      const limit = maxBytes ? ` The server's upload limit is ${(maxBytes / 1048576).toFixed(0)} MiB.` : "";
      reject(new ApiError(0, { code: "upload_cut_off", message: `the upload of ${file.name} was cut off.${limit}`,
                               hint: "check the file's size and that the server is running" }));
    };
    xhr.send(file);
  });
}

// Follow a job: server-sent events read through fetch (EventSource cannot send the key in a
// header), falling back to polling if the stream cannot be used.
export async function followJob(jobId, onStatus, signal) {
  const path = `/v1/workspace/jobs/${jobId}`;
  let last = null;
  try {
    const response = await fetch(`${path}/events`, { headers: authHeaders(), signal });
    if (!response.ok) throw await errorFrom(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (data) {
          last = JSON.parse(data);
          onStatus(last, "events");
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError" || (err instanceof ApiError && err.status >= 400 && err.status < 500)) throw err;
  }
  // Polling: the fallback, and a last look in case the stream ended early.
  while (!last || !["done", "failed", "cancelled"].includes(last.state)) {
    if (signal && signal.aborted) throw new DOMException("aborted", "AbortError");
    last = await request(path, { signal });
    onStatus(last, "polling");
    if (!["done", "failed", "cancelled"].includes(last.state)) {
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  return last;
}

// Downloads: the key goes in a header to ask for a one-time link; the browser then saves the
// file from that link itself (no copy of a large file in page memory, no key in a URL).
export async function download(jobId, kind) {
  const link = await request(`/v1/workspace/jobs/${jobId}/downloads`, { method: "POST", json: { kind } });
  const a = document.createElement("a");
  a.href = link.url;
  a.download = link.filename;
  a.rel = "noopener";
  document.body.appendChild(a);
  a.click();
  a.remove();
  return link;
}
