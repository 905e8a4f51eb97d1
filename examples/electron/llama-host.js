'use strict';
// Utility-process entry (LLAMA_HOST_MODE=utility): hosts the bridge outside
// the main process, so decoding frames and streaming chunks never competes
// with the main process's event loop. The worker becomes a child of this
// utility process; LLAMA_WORKER_PARENT_PID names it, so the worker exits if
// this process dies, whatever the reason.
//
// Messages from main.js on process.parentPort:
//   {type: 'start', workerOptions, loadOptions}   once, first
//   {type: 'connect'} + one transferred port      per renderer
//   {type: 'close'}                               shut down, then exit
const { createHost } = require('./bridge.js');

let host = null;

process.parentPort.on('message', async (event) => {
  const message = event.data;
  if (message.type === 'start' && host === null) {
    host = createHost(message.workerOptions, message.loadOptions);
  } else if (message.type === 'connect') {
    (await host).connect(event.ports[0]);
  } else if (message.type === 'close') {
    await (await host)?.close();
    process.exit(0);
  }
});
