// React hook for the V2 flow, built on promptgen-client.js (the specification's
// usePromptGeneration). React is the host application's own:
//
//   import { usePromptGeneration } from "./use-prompt-generation.js";
//   const { status, progress, results, error, startGeneration, retryFailed, cancel } =
//     usePromptGeneration(templateId, personas, modeMapping);
//
// `progress` maps persona id -> { status, name, mode, error, errorCode }.
import { useCallback, useEffect, useRef, useState } from "react";

import { applyMessage, createClient, emptyJobState } from "./promptgen-client.js";

export function usePromptGeneration(templateId, personas, modeMapping, { client = createClient() } = {}) {
  const [job, setJob] = useState(emptyJobState());
  const [error, setError] = useState(null);
  const follower = useRef(null);

  const follow = useCallback((jobId) => {
    if (follower.current) follower.current.close();
    setJob({ ...emptyJobState(jobId), status: "processing" });
    follower.current = client.follow(jobId, {
      onMessage: (message, id) => setJob((state) => applyMessage(state, message, id)),
      onError: (err) => setError(err),
    });
  }, [client]);

  const startGeneration = useCallback(async () => {
    setError(null);
    try {
      const ids = personas.map((p) => p.id);
      const { job_id: jobId } = await client.startGeneration(templateId, ids, modeMapping);
      follow(jobId);
      return jobId;
    } catch (err) {
      setError(err);
      return null;
    }
  }, [client, follow, templateId, personas, modeMapping]);

  const retryFailed = useCallback(async () => {
    if (!job.jobId) return null;
    try {
      const { job_id: jobId } = await client.retryFailed(job.jobId);
      follow(jobId);
      return jobId;
    } catch (err) {
      setError(err);
      return null;
    }
  }, [client, follow, job.jobId]);

  const cancel = useCallback(async () => {
    if (job.jobId) await client.cancel(job.jobId).catch(setError);
  }, [client, job.jobId]);

  useEffect(() => () => follower.current && follower.current.close(), []);

  return {
    jobId: job.jobId,
    status: job.status,
    progress: job.progress,
    results: job.results,
    error,
    startGeneration,
    retryFailed,
    cancel,
  };
}
