// vistune chat page: sends the conversation to /v1/chat/completions with stream=true and shows the
// answer as it streams in. The image (as a data URL) goes with the first user message of each request.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 1024; // larger images are scaled down before upload

let imageUrl = null;   // data URL of the current image, or null
let turns = [];        // [{role, content}] of finished turns (content: text)
let modelName = null;
let controller = null; // AbortController of the request in flight

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  li.append(who, body);
  $("messages").append(li);
  li.scrollIntoView({block: "end"});
  return body;
}

function resetChat() {
  if (controller) controller.abort();
  turns = [];
  $("messages").replaceChildren();
  setStatus(imageUrl ? "New conversation about this image." : "New conversation.");
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onerror = () => reject(new Error("cannot read the file"));
    reader.onload = () => {
      const img = new Image();
      img.onerror = () => reject(new Error("the file is not an image the browser can open"));
      img.onload = () => {
        const scale = Math.min(1, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
        if (scale === 1) { resolve(reader.result); return; }
        const canvas = document.createElement("canvas");
        canvas.width = Math.round(img.naturalWidth * scale);
        canvas.height = Math.round(img.naturalHeight * scale);
        canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
        resolve(canvas.toDataURL("image/png"));
      };
      img.src = reader.result;
    };
    reader.readAsDataURL(file);
  });
}

function requestMessages(question) {
  const all = [...turns, {role: "user", content: question}];
  return all.map((m, i) => {
    if (i === 0 && imageUrl) {
      return {role: "user", content: [
        {type: "image_url", image_url: {url: imageUrl}},
        {type: "text", text: m.content},
      ]};
    }
    return {role: m.role, content: m.content};
  });
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function numberField(id, fallback) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

async function ask(question) {
  const body = {
    messages: requestMessages(question),
    stream: true,
    temperature: numberField("temperature", 0.2),
    max_tokens: Math.round(numberField("max-tokens", 256)),
  };
  if (modelName) body.model = modelName;
  addMessage("user", question);
  const out = addMessage("assistant", "");
  out.parentElement.classList.add("streaming");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").hidden = false;
  setStatus("Thinking…");
  let answer = "";
  let finished = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { finished = true; continue; }
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            answer += choice.delta.content;
            out.textContent = answer;
            setStatus("Answering…");
          }
        }
      }
    }
    if (!finished) throw new Error("the answer stream ended early");
    turns.push({role: "user", content: question}, {role: "assistant", content: answer || "(no answer)"});
    setStatus("");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped.");
      if (answer) turns.push({role: "user", content: question}, {role: "assistant", content: answer});
    } else {
      out.parentElement.classList.add("error");
      out.textContent = answer + (answer ? "\n" : "") + "Error: " + err.message;
      setStatus("");
    }
  } finally {
    out.parentElement.classList.remove("streaming");
    if (finished) out.parentElement.classList.add("done");
    controller = null;
    $("send").disabled = false;
    $("stop").hidden = true;
  }
}

$("image-input").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  try {
    imageUrl = await readImage(file);
    $("preview").src = imageUrl;
    $("preview").hidden = false;
    resetChat();
  } catch (err) {
    setStatus("Error: " + err.message);
  }
});

$("ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question || controller) return;
  $("question").value = "";
  ask(question);
});

$("question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("ask-form").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new-chat").addEventListener("click", resetChat);

fetch("/health").then((r) => r.json()).then((h) => {
  modelName = h.model;
  $("model").textContent = "model: " + h.model;
}).catch(() => setStatus("The server does not answer."));
