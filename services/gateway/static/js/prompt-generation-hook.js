// The React hook of the specification (usePromptGeneration), built on promptgen-client.js,
// for a React that is passed in: createUsePromptGeneration(React) returns the hook.
// use-prompt-generation.js does that with `import * as React from "react"`, for apps whose
// bundler or import map resolves "react". This module imports nothing but the client.
import { counts, createClient, emptyJobState, isFinished } from "./promptgen-client.js";

export function createUsePromptGeneration(React) {
  const { useCallback, useEffect, useMemo, useRef, useState } = React;

  // templateId: the template; personas: [{id, ...}]; modeMapping: {personaId: mode}.
  // options.jobId: follow this job on mount (e.g. read from the URL after a reload: the
  //   whole history is replayed, so nothing is missing and nothing is counted twice).
  // options.apiKey or options.getToken (an async function returning the key, called before
  //   every request): for a gateway with auth on; sent as `Authorization: Bearer …`, and the
  //   SSE stream opens with the job's tokenised sse_endpoint. Either may change between renders.
  // options.baseUrl: another origin than the page's.
  // options.client: a client from createClient() instead (create it once, outside the
  //   component, so that it stays the same object from one render to the next).
  return function usePromptGeneration(templateId, personas, modeMapping, options = {}) {
    const credentials = useRef(options);
    credentials.current = options;
    const fallback = useMemo(() => createClient({
      baseUrl: options.baseUrl,
      // read at each request, so the client (and the stream it follows) outlives a new key or provider
      getToken: async () => {
        const { apiKey, getToken } = credentials.current;
        return getToken ? getToken() : apiKey ?? null;
      },
    }), [options.baseUrl]);
    const client = options.client || fallback;
    const [job, setJob] = useState(() => emptyJobState(options.jobId ?? null));
    const [error, setError] = useState(null);
    const [connection, setConnection] = useState("idle");
    const [total, setTotal] = useState(null);
    const watcher = useRef(null);

    const follow = useCallback((jobId, personaCount = null, sseEndpoint = null) => {
      if (watcher.current) watcher.current.close();
      setError(null);
      setTotal(personaCount);
      if (personaCount === null) {
        client.jobStatus(jobId).then((view) => setTotal(view.total_personas), () => {});
      }
      setJob({ ...emptyJobState(jobId), status: "processing" });
      watcher.current = client.watch(jobId, {
        sseEndpoint,
        onChange: (state) => {
          setJob(state);
          if (state.error && !isFinished(state.status)) setError(new Error(state.error));
        },
        onConnection: setConnection,
      });
      return jobId;
    }, [client]);

    useEffect(() => {
      if (options.jobId) follow(options.jobId, null);
      return () => { if (watcher.current) watcher.current.close(); };
    }, [options.jobId, follow]);

    const run = useCallback(async (work) => {
      setError(null);
      try {
        return await work();
      } catch (err) {
        setError(err);
        return null;
      }
    }, []);

    const startGeneration = useCallback(() => run(async () => {
      const ids = personas.map((p) => (typeof p === "string" ? p : p.id));
      const started = await client.startGeneration(templateId, ids, modeMapping);
      return follow(started.job_id, started.persona_count, started.sse_endpoint);
    }), [run, client, follow, templateId, personas, modeMapping]);

    const retryFailed = useCallback(() => run(async () => {
      if (!job.jobId) return null;
      const started = await client.retryFailed(job.jobId);
      return follow(started.job_id, started.persona_count, started.sse_endpoint);
    }), [run, client, follow, job.jobId]);

    const cancel = useCallback(() => run(async () => {
      if (!job.jobId) return null;
      return client.cancel(job.jobId);
    }), [run, client, job.jobId]);

    const resume = useCallback((jobId) => follow(jobId, null), [follow]);

    return {
      jobId: job.jobId,
      status: job.status,          // idle | processing | completed | failed | cancelled | expired
      progress: job.progress,      // {personaId: {status, name, mode, error, errorCode}}
      results: job.results,        // the SSE `results` payload, once the job has ended
      counts: counts(job, job.results ? job.results.total_personas : total ?? undefined),
                                   // {total, done, successful, failed, cancelled, processing}
      error,                       // the last failed call (a PromptgenError has .status, .code)
      connection,                  // idle | connecting | live | reconnecting | closed
      lastEventId: job.lastEventId,
      startGeneration,
      retryFailed,
      cancel,
      resume,                      // resume(jobId): follow an existing job (whole history replayed)
    };
  };
}
