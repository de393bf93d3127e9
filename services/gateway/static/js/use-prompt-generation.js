// The specification's React hook, for a React app (React is the app's own, a peer):
//
//   import { usePromptGeneration } from "/static/js/use-prompt-generation.js";
//
//   function Generate({ templateId, personas, modeMapping }) {
//     const { status, progress, counts, results, error, startGeneration, retryFailed, cancel } =
//       usePromptGeneration(templateId, personas, modeMapping);
//     ...
//   }
//
// "react" must resolve: through the app's bundler, or in the browser through an import map
// ({"imports": {"react": "<an ES module of React>"}}). To pass React in yourself instead:
//   import { createUsePromptGeneration } from "/static/js/prompt-generation-hook.js";
//   const usePromptGeneration = createUsePromptGeneration(React);
//
// progress maps persona id -> { status, name, mode, error, errorCode }; results is the SSE
// `results` payload; options.jobId follows an existing job (e.g. from the URL after a reload).
// With auth on, pass the key or a token provider as the fourth argument:
//   usePromptGeneration(templateId, personas, modeMapping, { apiKey })
//   usePromptGeneration(templateId, personas, modeMapping, { getToken: async () => fetchKey() })
import * as React from "react";

import { createUsePromptGeneration } from "./prompt-generation-hook.js";

export { createUsePromptGeneration };
export const usePromptGeneration = createUsePromptGeneration(React);
