// The jobs page: polls GET /jobs every second and draws one progress bar per job; the form POSTs /jobs,
// a job's "cancel" button sends DELETE /jobs/<id>.
// Plain browser JavaScript, no build step and no external files. Every text goes in through textContent.
"use strict";

(() => {
  const POLL_MS = 1000;
  const body = document.body;
  const jobsUrl = body.dataset.jobsUrl;
  const createUrl = body.dataset.createUrl;
  const list = document.getElementById("jobs");
  const template = document.getElementById("job-template");
  const empty = document.getElementById("empty");
  const updated = document.getElementById("updated");
  const form = document.getElementById("start-form");
  const projectInput = document.getElementById("project");
  const overwriteInput = document.getElementById("overwrite");
  const modeInput = document.getElementById("mode");
  const labelInput = document.getElementById("label");
  const outputInput = document.getElementById("output");
  const MODES = { segevery: "everything", boxes: "rectangles → masks", points: "keypoints → masks" };
  const startButton = document.getElementById("start");
  const message = document.getElementById("message");
  const ENDED = ["finished", "failed", "cancelled"];

  function countsText(job) {
    if (job.total === null) {
      return ENDED.includes(job.state) ? "no tasks listed" : "listing the project's tasks…";
    }
    const settled = job.done + job.skipped + job.failed;
    const without = job.mode === "boxes" ? "rectangles" : "keypoints";
    const skipped = job.no_prompts
      ? `${job.skipped} skipped (${job.skipped - job.no_prompts} already had this model's prediction, ` +
        `${job.no_prompts} had no ${without})`
      : `${job.skipped} skipped (already had this model's prediction)`;
    return `${settled} of ${job.total} tasks · ${job.done} pre-annotated · ${skipped} · ` +
      `${job.failed} failed · ${job.regions} regions`;
  }

  function writtenText(job) {
    if (!job.model_version) return "";
    const labels = job.mode === "segevery"
      ? `label “${job.label}”`
      : `each mask labelled as its ${job.mode === "boxes" ? "rectangle" : "keypoints"}`;
    const kind = job.output ? `${job.output} regions of ${job.output_tag}` : "regions";
    return `Writes ${kind}, ${labels}, as model version “${job.model_version}”: choose it under ` +
      `Settings › Annotation › Use predictions.`;
  }

  function titleText(job) {
    const scope = job.tasks ? `, ${job.tasks.length} selected task(s)` : "";
    const how = job.overwrite ? ", overwrite" : "";
    return `Project ${job.project} · ${MODES[job.mode] || job.mode}${scope}${how}`;
  }

  function fill(item, job) {
    const percent = Math.max(0, Math.min(100, job.percent || 0));
    item.dataset.state = job.state;
    item.dataset.total = job.total === null ? "" : String(job.total);
    item.dataset.done = String(job.done);
    item.dataset.skipped = String(job.skipped);
    item.dataset.failed = String(job.failed);
    item.dataset.percent = String(percent);
    item.querySelector(".title").textContent = titleText(job);
    item.querySelector(".state").textContent = job.state;
    item.querySelector(".when").textContent =
      `job ${job.id.slice(0, 8)} · ${job.source || "api"} · started ${new Date(job.created_at).toLocaleString()}`;
    const bar = item.querySelector(".bar");
    bar.setAttribute("aria-valuenow", String(percent));
    item.querySelector(".fill").style.width = `${percent}%`;
    item.querySelector(".counts").textContent = countsText(job);
    item.querySelector(".version").textContent = writtenText(job);
    const failedNote = job.failed ? `${job.failed} task(s) failed; the reasons are in GET ${jobsUrl}/${job.id}` : "";
    const cancelNote = job.state === "cancelled" ? `cancelled: ${job.cancel_reason || "by request"}` : "";
    item.querySelector(".error").textContent = cancelNote || job.error || failedNote;
    item.querySelector(".cancel").hidden = ENDED.includes(job.state);
    item.querySelector(".retry").textContent =
      job.last_error ? `retry ${job.retries}: ${job.last_error}` : "";
  }

  function render(jobs) {
    const seen = new Set();
    jobs.forEach((job, index) => {
      seen.add(job.id);
      let item = list.querySelector(`li[data-job-id="${CSS.escape(job.id)}"]`);
      if (!item) {
        item = template.content.firstElementChild.cloneNode(true);
        item.dataset.jobId = job.id;
      }
      fill(item, job);
      if (list.children[index] !== item) {
        list.insertBefore(item, list.children[index] || null);
      }
    });
    Array.from(list.children).forEach((item) => {
      if (!seen.has(item.dataset.jobId)) item.remove();
    });
    empty.hidden = jobs.length > 0;
  }

  async function refresh() {
    const response = await fetch(jobsUrl, { headers: { Accept: "application/json" }, cache: "no-store" });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    render(answer.jobs);
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  async function poll() {
    try {
      await refresh();
    } catch (error) {
      updated.textContent = `cannot read the jobs: ${error.message}`;
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  function startBody(project) {
    const options = {};
    if (labelInput.value.trim()) options.label = labelInput.value.trim();
    if (outputInput.value) options.output = outputInput.value;
    return { project, mode: modeInput.value, overwrite: overwriteInput.checked, options };
  }

  function say(text, bad) {
    message.textContent = text;
    message.classList.toggle("bad", Boolean(bad));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const project = Number(projectInput.value);
    if (!Number.isInteger(project) || project < 1) {
      say("Enter a project id (a positive whole number).", true);
      return;
    }
    startButton.disabled = true;
    try {
      const response = await fetch(createUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(startBody(project)),
      });
      const answer = await response.json();
      if (!response.ok) {
        say(answer.error || `The backend answered HTTP ${response.status}.`, true);
      } else if (answer.created) {
        say(`Started job ${answer.job.id.slice(0, 8)} for project ${project}.`, false);
      } else {
        say(`Project ${project} already has a running job (${answer.job.id.slice(0, 8)}); showing it below.`, false);
      }
      await refresh();
    } catch (error) {
      say(`Could not start the job: ${error.message}`, true);
    } finally {
      startButton.disabled = false;
    }
  });

  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button.cancel");
    if (!button) return;
    const item = button.closest("li.job");
    const id = item.dataset.jobId;
    const question = `Cancel job ${id.slice(0, 8)}? Tasks not pre-annotated yet stay without a prediction.`;
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      const response = await fetch(`${jobsUrl}/${encodeURIComponent(id)}`, {
        method: "DELETE",
        headers: { Accept: "application/json" },
      });
      const answer = await response.json();
      if (!response.ok) {
        say(answer.error || `The backend answered HTTP ${response.status}.`, true);
      } else if (answer.cancelled) {
        say(`Cancelled job ${id.slice(0, 8)}; project ${answer.job.project} is free for a new job.`, false);
      } else {
        say(`Job ${id.slice(0, 8)} had already ended (${answer.job.state}).`, false);
      }
      await refresh();
    } catch (error) {
      say(`Could not cancel the job: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  poll();
})();
